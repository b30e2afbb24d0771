"""Shared fixtures: a real database (SQLite and PostgreSQL), a config overlay, a real listener.

PostgreSQL tests use a fresh schema per test on ``$MAILGATE_TEST_POSTGRES_URL`` (default:
the local server, database ``test``). They are skipped only when the server is
unreachable, and never when ``$MAILGATE_REQUIRE_POSTGRES`` is set (CI sets it).
"""

from __future__ import annotations

import io
import logging
import os
import smtplib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mailgate.app import ServerThread
from mailgate.config import Config, parse_config
from mailgate.store import Store

from .sink import Sink

# mailgate keeps a parsed config per file digest in a cache directory (mailgate.confcache):
# the tests' own, never the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault("MAILGATE_CACHE_DIR", tempfile.mkdtemp(prefix="mailgate-test-cache-"))

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get(
    "MAILGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = bool(os.environ.get("MAILGATE_REQUIRE_POSTGRES"))


def _find_corpus() -> Path:
    """The shared real-world corpus (byte-exact fixtures; only ever read).

    ``$MAILGATE_CORPUS`` when set; else the first ``shared/corpus`` in the folders above the
    repository, so that a clone finds the ``shared/`` beside it however deep it sits (CI's
    fresh clone, a second work tree). Where nothing is found, the nearest such place.
    """
    if os.environ.get("MAILGATE_CORPUS"):
        return Path(os.environ["MAILGATE_CORPUS"])
    for folder in ROOT.parents:
        if (folder / "shared" / "corpus").is_dir():
            return folder / "shared" / "corpus"
    return ROOT.parent / "shared" / "corpus"


CORPUS = _find_corpus()


def corpus_missing(path: Path = CORPUS) -> str:
    """The skip reason of a corpus test: where it looked, and how to point it elsewhere."""
    where = (
        "from $MAILGATE_CORPUS"
        if os.environ.get("MAILGATE_CORPUS")
        else f"the first shared/corpus above {ROOT}"
    )
    return (
        f"corpus not found at {path} ({where}); "
        "set MAILGATE_CORPUS=/path/to/shared/corpus to run these tests"
    )


def corpus_files() -> list[tuple[str, str]]:
    """(relative path, category) for every message listed in the corpus's index.tsv."""
    index = CORPUS / "index.tsv"
    if not index.is_file():
        return []
    lines = index.read_text(encoding="utf-8").splitlines()
    return [(path, category) for path, category in (line.split("\t") for line in lines if line)]


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return " ".join(str(exc).split())[:200]


_PG_PROBLEM = _pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty database, on each backend."""
    with empty_database(request.param, tmp_path) as url:
        yield url


@contextmanager
def empty_database(backend: str, directory: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file in ``directory``, or a fresh PostgreSQL
    schema that is dropped afterwards (skipped when PostgreSQL is unreachable, unless it
    is required)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'mailgate.db'}"
        return
    if _PG_PROBLEM is not None:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {_PG_PROBLEM}")
        pytest.skip(f"PostgreSQL unreachable: {_PG_PROBLEM}")
    schema = f"mgtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


BASE_CONFIG: dict[str, Any] = {
    # Mail is stored in a thread of the test process; the worker processes have own tests.
    "server": {"host": "127.0.0.1", "port": 0, "hostname": "mx.test", "timeout": 30, "workers": 0},
    # The agent tech@ shares the support domain: mailgate takes only support@ and help@
    # (and their plus-addresses, the reply tokens), as [mail] recipients says.
    "mail": {
        "domains": ["support.example.com"],
        "address": "support@support.example.com",
        "recipients": ["support", "help"],
    },
    "database": {"lock_timeout": 1.0},
    "agents": {"addresses": ["tech@support.example.com"]},
    # The MTA in front of mailgate (as tests play it) stamps its verdicts with this id.
    "security": {"authserv_id": "mx.test"},
    "organizations": [
        {
            "name": "Müller Logistik GmbH",
            "aliases": ["Müller Logistik"],
            "domains": ["mueller-logistik.de"],
            "members": [
                "anna@mueller-logistik.de",
                "berater@agentur.de",
                "chef@mueller-logistik.de",
            ],
            "followers": ["chef@mueller-logistik.de"],
        },
        {
            "name": "Agentur Blau",
            "domains": ["agentur.de"],
            "members": ["berater@agentur.de"],
        },
    ],
}


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def toml_dumps(data: dict[str, Any]) -> str:
    """A tiny TOML writer for test overlays (tables, arrays of tables, scalars, lists)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {scalar(v)}" for k, v in item.items())
        else:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


@dataclass
class Clock:
    """A controllable clock: tests move time instead of sleeping."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 26, 10, 0, tzinfo=UTC))


@pytest.fixture
def make_config(db_url: str, tmp_path: Path) -> Callable[..., tuple[Config, Path]]:
    """Build a config (and its TOML file) from the base plus an overlay."""

    def make(
        overlay: dict[str, Any] | None = None, name: str = "mailgate.toml"
    ) -> tuple[Config, Path]:
        data = _merge(BASE_CONFIG, {"database": {"url": db_url}})
        data = _merge(data, {"outbound": {"maildir": str(tmp_path / "outbox")}})
        data = _merge(data, overlay or {})
        path = tmp_path / name
        path.write_text(toml_dumps(data), encoding="utf-8")
        return parse_config(data, source=str(path)), path

    return make


@pytest.fixture
def overlay() -> dict[str, Any]:
    """What a test module adds to the base config: a module overrides this fixture, and
    ``config`` and ``config_path`` are that config and its file."""
    return {}


@pytest.fixture
def made(
    make_config: Callable[..., tuple[Config, Path]], overlay: dict[str, Any]
) -> tuple[Config, Path]:
    return make_config(overlay)


@pytest.fixture
def config(made: tuple[Config, Path]) -> Config:
    return made[0]


@pytest.fixture
def config_path(made: tuple[Config, Path]) -> Path:
    return made[1]


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A real SMTP relay for outbound mail (aiosmtpd offers no SMTPUTF8 unless told to)."""
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def relayed(make_config: Callable[..., tuple[Config, Path]], sink: Sink) -> tuple[Config, Path]:
    """The test config, relaying outbound mail to the sink."""
    return make_config(
        {"outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port}},
        name="relayed.toml",
    )


@contextmanager
def open_store(config: Config, clock: Clock) -> Iterator[Store]:
    """The config's store, migrated and synced as ``serve`` leaves it; closed after."""
    store = Store(config.database.url, config.database.lock_timeout)
    try:
        store.migrate()
        store.sync(config, clock())
        yield store
    finally:
        store.close()


@pytest.fixture
def store(config: Config, clock: Clock) -> Iterator[Store]:
    with open_store(config, clock) as opened:
        yield opened


@pytest.fixture
def server(config: Config, store: Store, clock: Clock) -> Iterator[int]:
    """A real mailgate listener on a free port; yields the port."""
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def mail(
    subject: str = "Drucker kaputt",
    sender: str = "Anna Schmidt <anna@mueller-logistik.de>",
    to: str = "support@support.example.com",
    body: str = "Hallo,\nder Drucker druckt nicht.\n",
    message_id: str | None = None,
    extra: str = "",
) -> bytes:
    """A small, valid RFC 5322 message."""
    message_id = message_id or f"<{uuid.uuid4().hex}@mueller-logistik.de>"
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n'
        f"{extra}\r\n"
    )
    return head.encode() + body.replace("\n", "\r\n").encode("utf-8")


# What the MTA in front of mailgate adds to an agent's genuine mail (authserv-id mx.test):
# with it, a mail From an agent address acts as the agent's (see mailgate/pipeline/trust.py).
AUTHENTICATED = "Authentication-Results: mx.test; dmarc=pass header.from=support.example.com\r\n"


def send(
    port: int,
    raw: bytes,
    mail_from: str = "anna@mueller-logistik.de",
    rcpt: tuple[str, ...] = ("support@support.example.com",),
) -> dict[str, tuple[int, bytes]]:
    """Send over a real SMTP socket; returns refused recipients like smtplib."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(mail_from, list(rcpt), raw)


def without_agent_notices(config: Config) -> Config:
    """The config with ``[agents] notify = []``: for tests of how one row is delivered,
    where the agents' notice of a new ticket would only be one more row to count."""
    return replace(config, agents=replace(config.agents, notify=()))


MAILGATE = [sys.executable, "-m", "mailgate"]


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass: for states that no event
    announces (a file appearing, a process blocking). Never a fixed sleep that hopes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def flock_waiters(pid: int) -> int:
    """How many ``flock`` requests of process ``pid`` wait in the kernel, from /proc/locks
    (Linux): a request waiting there wakes when the lock is released, a polling one never
    shows up."""
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields and fields[fields.index("FLOCK") + 3] == str(pid):
            count += 1
    return count


@dataclass(frozen=True)
class CliResult:
    """What one ``mailgate`` command left behind, in the shape of a finished subprocess."""

    returncode: int
    stdout: bytes
    stderr: bytes


def run_cli(config_path: Path | None, *args: str, stdin: bytes = b"") -> CliResult:
    """``mailgate --config PATH ARGS`` in this process, as its console script runs it.

    Starting an interpreter per command cost a second or more of imports; the command itself
    takes milliseconds. ``main`` runs with its own stdin, stdout and stderr (bytes, UTF-8,
    like a subprocess's pipes) and with no logging set up, so its ``setup_logging`` does what
    it does in a fresh process and its log lines land in ``stderr``. The exit status is the
    one ``sys.exit`` would give the shell. ``serve`` stays a subprocess in the tests: it
    waits for signals.
    """
    from mailgate.cli import main

    argv = [*(["--config", str(config_path)] if config_path is not None else []), *args]
    streams = (sys.stdin, sys.stdout, sys.stderr)
    out, err = io.BytesIO(), io.BytesIO()
    # Held until the end: a wrapper that is collected closes the buffer under it.
    own = (
        io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
        io.TextIOWrapper(out, encoding="utf-8", write_through=True),
        io.TextIOWrapper(err, encoding="utf-8", write_through=True),
    )
    sys.stdin, sys.stdout, sys.stderr = own
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root.handlers = []
    code: object = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        own[1].flush()
        own[2].flush()
        for handler in root.handlers:
            handler.close()
        root.handlers, sys.stdin, sys.stdout, sys.stderr = handlers, *streams
        root.setLevel(level)
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
    if code is None:
        returncode = 0
    elif isinstance(code, int):
        returncode = code
    else:  # sys.exit("message"): the message goes to stderr and the status is 1
        err.write(f"{code}\n".encode())
        returncode = 1
    return CliResult(returncode, out.getvalue(), err.getvalue())
