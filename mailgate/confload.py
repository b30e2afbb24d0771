"""The config file: where it is, read and validated, and its fingerprint.

:mod:`mailgate.config` says what a config is and checks a decoded document; this finds the
file (``--config``, ``$MAILGATE_CONFIG``, ``./mailgate.toml``), reads it (or, for a command
that reads the database only, the cached rest of it: :mod:`mailgate.confcache`), and gives
the digest processes compare to know they hold the same config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mailgate import confcache
from mailgate.config import DEFAULT_FILE, ENV_VAR, Config, ConfigProblems, parse_config
from mailgate.errors import ConfigError


def fingerprint(config: Config, parts: tuple[str, ...] | None = None) -> str:
    """A digest of the config that is the same in every process that holds it.

    Work done ahead with one config (in a parser process) is used by another process only
    when that one holds the same config; ``repr`` would not do (set order differs per
    process). ``parts``: only those top-level sections (the store syncs two into the
    database, and an edit elsewhere must not cost every start a sync under its lock).
    """
    data = {k: v for k, v in asdict(config).items() if parts is None or k in parts}
    text = json.dumps(data, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


# --- locating the file -------------------------------------------------------------------


def find_config_path(explicit: str | None) -> Path | None:
    """``--config`` wins, then ``$MAILGATE_CONFIG``, then ``./mailgate.toml``, else None."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_config(explicit: str | None = None, organizations: bool = True) -> Config:
    """Load and validate the configuration; raise :class:`ConfigError` with one clear line
    (a :class:`ConfigProblems` when the file was read: its ``problems``, one per mistake).

    ``organizations=False``: a command that only reads the database may take the config
    without its organizations (``partial``), from the cache a full load of the same bytes
    left (:mod:`mailgate.confcache`): parsing 100,000 organizations takes seconds.
    """
    path = find_config_path(explicit)
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if not organizations and (light := confcache.load(digest)) is not None:
        data, names = light
        config = parse_config(data, source=str(path), known=names)
        return replace(config, file_digest=digest, partial=True)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = parse_config(data, source=str(path))
    except ConfigProblems as exc:
        raise ConfigProblems(exc.problems, str(path)) from None
    confcache.save(digest, data)
    return replace(config, file_digest=digest)
