"""The config without its organizations, cached by the file's digest, for cheap commands.

``mailgate tickets show 12`` needs the database URL and a few settings, not the 100,000
organizations a large installation lists, whose parsing takes seconds. After every full
load the rest of the document (and the organizations' names, which other sections may
name) is kept as JSON under the SHA-256 of the file's bytes; a command that reads the
database loads that instead when the file's bytes are unchanged. The database notes the
digest of the file it was synced from, so such a command also knows without parsing that
no sync is due (:meth:`mailgate.store.Store.in_sync`).

The cache lives in ``$MAILGATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mailgate``, else
``~/.cache/mailgate``: a directory of the user's own (mode 0700); a file another user could
have written is ignored. A cache that cannot be read or written costs only the time saved.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEEP = 16  # cached configs kept; the oldest go first


def directory() -> Path:
    explicit = os.environ.get("MAILGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mailgate"


def load(digest: str) -> tuple[dict[str, Any], frozenset[str]] | None:
    """The document without organizations and the organizations' names (case-folded)."""
    path = directory() / f"config-{digest}.json"
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("config cache %s ignored: not the user's own file", path)
            return None
        cached = json.loads(path.read_text(encoding="utf-8"))
        return cached["data"], frozenset(cached["names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(digest: str, data: Mapping[str, Any]) -> None:
    """Keep ``data`` without its organizations for :func:`load`; quietly, if at all."""
    folder = directory()
    path = folder / f"config-{digest}.json"
    try:
        if path.exists():
            return
    except OSError:  # a directory of another user's (an MTA's pipe runs as its own user)
        return
    organizations = data.get("organizations") or []
    names = [
        str(org["name"]).casefold()
        for org in organizations
        if isinstance(org, Mapping) and "name" in org
    ]
    rest = {key: value for key, value in data.items() if key != "organizations"}
    try:
        text = json.dumps({"data": rest, "names": names}, ensure_ascii=False)
    except (TypeError, ValueError):  # a TOML date or time: not worth caching
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / f".config-{digest}.{os.getpid()}.tmp"
        partial.write_text(text, encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(path)
        _trim(folder)
    except OSError as exc:
        log.debug("config cache not written: %s", exc)


def _trim(folder: Path) -> None:
    cached = sorted(folder.glob("config-*.json"), key=lambda p: p.stat().st_mtime)
    for old in cached[:-KEEP]:
        old.unlink(missing_ok=True)
