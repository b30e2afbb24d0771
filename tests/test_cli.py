"""The command line as admins and MTAs use it: real sockets, JSON contracts, exit codes.

Commands run in-process through ``mailgate.cli.main`` (see ``run_cli``); what only a real
process shows runs as one: the exit codes and stdout JSON an MTA pipe reads from ``ingest``,
and ``serve`` with its signals.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from mailgate.config import Config

from .conftest import BASE_CONFIG, MAILGATE, CliResult, mail, run_cli, send
from .test_smtp import database_write_locked


def mailgate(config_path: Path, *args: str, stdin: bytes = b"") -> CliResult:
    """One command, in this process."""
    return run_cli(config_path, *args, stdin=stdin)


def mailgate_process(
    config_path: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """One command as an MTA's pipe runs it: its own interpreter, stdin, stdout, exit code."""
    return subprocess.run(
        [*MAILGATE, "--config", str(config_path), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def as_json(proc: CliResult | subprocess.CompletedProcess[bytes]) -> Any:
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


class Daemon:
    """`mailgate serve` as a subprocess; its log lines are collected as they come."""

    def __init__(self, config_path: Path, own_group: bool = False) -> None:
        """``own_group``: in a process group of its own, so a test can signal all of it."""
        self.proc = subprocess.Popen(
            [*MAILGATE, "--config", str(config_path), "serve"],
            stderr=subprocess.PIPE,
            start_new_session=own_group,
        )
        self.lines: list[str] = []
        self._news = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._news:
                self.lines.append(line.decode())
                self._news.notify_all()
        with self._news:  # the pipe is closed: the daemon is gone
            self._closed = True
            self._news.notify_all()

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 60) -> re.Match[str]:
        """The first log line from ``start`` on that matches (woken by each new line)."""
        deadline = time.monotonic() + timeout
        with self._news:
            while True:
                for line in self.lines[start:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._news.wait(left)
        raise AssertionError(f"no log line matching {pattern!r}:\n{''.join(self.lines)}")


# The daemon runs as a newcomer runs it: with its default ingest worker process(es).
AUTO_WORKERS = {"server": {"workers": "auto"}}


@pytest.fixture
def config_path(make_config: Callable[..., tuple[Config, Path]]) -> Path:
    return make_config(AUTO_WORKERS)[1]


@pytest.fixture
def daemon(config_path: Path) -> Iterator[Daemon]:
    d = Daemon(config_path)
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
    d.proc.wait(10)


@pytest.fixture
def serve(daemon: Daemon) -> tuple[subprocess.Popen[bytes], int]:
    return daemon.proc, daemon.port


def test_serve_ingests_mail_and_stops_cleanly_on_sigterm(
    serve: tuple[subprocess.Popen[bytes], int], config_path: Path
) -> None:
    """The newcomer's path: serve, send with smtplib, list the ticket, SIGTERM exits 0."""
    proc, port = serve
    send(port, mail(subject="Müller Logistik: Drucker kaputt"))
    tickets = as_json(mailgate(config_path, "tickets", "list", "--json"))
    assert [(t["subject"], t["status"], t["organization"], t["requester"]) for t in tickets] == [
        (
            "Drucker kaputt",
            "new",
            "Müller Logistik GmbH",
            "anna@mueller-logistik.de",
        )
    ]
    assert set(tickets[0]) >= {
        "id",
        "subject",
        "status",
        "organization",
        "requester",
        "created_at",
        "updated_at",
    }
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_sighup_reloads_routing_and_refuses_a_bad_config(
    daemon: Daemon, make_config: Callable[..., tuple[Config, Path]], config_path: Path
) -> None:
    """SIGHUP swaps in a new config; an invalid one is refused and the old one stays."""
    send(daemon.port, mail(sender="neu@kunde-neu.de", subject="Vorher"))
    orgs = [*BASE_CONFIG["organizations"], {"name": "Kunde Neu", "members": ["neu@kunde-neu.de"]}]
    make_config({**AUTO_WORKERS, "organizations": orgs})
    mark = len(daemon.lines)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"config reloaded from .*: 3 organizations", mark)
    send(daemon.port, mail(sender="neu@kunde-neu.de", subject="Nachher"))

    good = config_path.read_text()
    config_path.write_text(good + "\n[server]\nport = 'kaputt'\n")
    mark = len(daemon.lines)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"config reload refused, the previous config stays in force", mark)
    send(daemon.port, mail(sender="neu@kunde-neu.de", subject="Danach"))

    config_path.write_text(good)
    tickets = as_json(mailgate(config_path, "tickets", "list", "--json"))
    assert [(t["subject"], t["organization"]) for t in tickets] == [
        ("Vorher", None),
        ("Nachher", "Kunde Neu"),
        ("Danach", "Kunde Neu"),
    ]
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    daemon._reader.join(10)
    assert "Traceback" not in "".join(daemon.lines)
    assert "stopped" in daemon.lines[-1]


def test_route_explains_without_writing(config_path: Path, tmp_path: Path) -> None:
    """`mailgate route` is a dry run: JSON contract, and no database is created."""
    proc = mailgate(
        config_path,
        "route",
        "--from",
        "berater@agentur.de",
        "AW: Mueller Logistik: Drucker kaputt",
        "--json",
    )
    decision = as_json(proc)
    assert decision["organization"] == "Müller Logistik GmbH"
    assert decision["subject"] == "Drucker kaputt"
    assert decision["score"] >= 85
    assert decision["candidates"][0] == {"name": "Müller Logistik GmbH", "score": decision["score"]}
    assert set(decision) >= {"organization", "reason", "score", "subject", "candidates"}
    assert not list(tmp_path.glob("*.db"))
    text = mailgate(config_path, "route", "--from", "fremd@gmail.com", "Müller Logistik: x")
    assert b"named M\xc3\xbcller Logistik GmbH but not authorised" in text.stdout
    bad = mailgate(config_path, "route", "--from", "nobody", "x")
    assert bad.returncode == 2 and b"not an email address" in bad.stderr


def test_ingest_prints_the_json_contract(config_path: Path) -> None:
    raw = mail(subject="Rechnung fehlt", message_id="<pipe-1@mueller-logistik.de>")
    result = as_json(
        mailgate_process(
            config_path,
            "ingest",
            "--mail-from",
            "anna@mueller-logistik.de",
            "--rcpt",
            "support@support.example.com",
            stdin=raw,
        )
    )
    assert result == {
        "action": "created",
        "ticket": 1,
        "organization": "Müller Logistik GmbH",
        "message_id": "pipe-1@mueller-logistik.de",
        "reason": result["reason"],
    }
    assert "member" in result["reason"]
    again = as_json(mailgate_process(config_path, "ingest", "-", stdin=raw))
    assert again == {**result, "action": "duplicate", "reason": "this mail is already stored"}


def test_ingest_from_a_file(config_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(mail(subject="Aus Datei"))
    assert as_json(mailgate(config_path, "ingest", str(path)))["action"] == "created"
    missing = mailgate(config_path, "ingest", str(tmp_path / "nope.eml"))
    assert missing.returncode == 75  # EX_TEMPFAIL: an MTA retries, never bounces
    assert b"cannot read" in missing.stderr


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff\xfe binary \x89PNG\r\n\x1a\n" * 20])
def test_ingest_unparseable_input_is_quarantined_with_exit_65(
    config_path: Path, garbage: bytes
) -> None:
    proc = mailgate_process(config_path, "ingest", stdin=garbage)
    assert proc.returncode == 65, proc.stderr
    result = json.loads(proc.stdout)
    assert result["action"] == "quarantined" and result["ticket"] is None
    assert result["reason"].startswith("unparseable")
    assert b"Traceback" not in proc.stderr


def test_ingest_with_database_down_exits_75_and_loses_nothing(
    make_config: Callable[..., tuple[Config, Path]], config: Config
) -> None:
    """A locked or unreachable database is temporary: EX_TEMPFAIL, so the MTA retries."""
    _, path = make_config()
    raw = mail(message_id="<tempfail-1@mueller-logistik.de>")
    assert mailgate(path, "init-db").returncode == 0
    with database_write_locked(config.database.url):
        proc = mailgate_process(path, "ingest", stdin=raw)
    assert proc.returncode == 75, proc.stderr
    assert b"try again later" in proc.stderr and b"Traceback" not in proc.stderr
    # the admin reading the MTA's log learns which database it was, never its password
    named = make_url(config.database.url).render_as_string(hide_password=True)
    assert f"(database {named}; try again later)".encode() in proc.stderr
    assert as_json(mailgate(path, "ingest", stdin=raw))["action"] == "created"
    assert len(as_json(mailgate(path, "tickets", "list", "--json"))) == 1


def test_unreachable_postgresql_exits_75(tmp_path: Path) -> None:
    path = tmp_path / "down.toml"
    path.write_text(
        '[database]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/none"\nlock_timeout = 1\n'
    )
    proc = mailgate_process(path, "ingest", stdin=mail())
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith("mailgate: error: database unavailable")


def test_ingest_with_a_bad_config_defers_the_mail(tmp_path: Path) -> None:
    """An invalid config is the admin's to fix; until then the MTA keeps the mail (75), it
    does not bounce it. Other commands say the same and exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'kaputt'\n")
    proc = mailgate_process(path, "ingest", stdin=mail())
    assert proc.returncode == 75
    assert proc.stdout == b""
    assert proc.stderr.decode().startswith(f"mailgate: error: config error: {path}: ")
    assert len(proc.stderr.splitlines()) == 1


def test_tickets_show_and_set(config_path: Path) -> None:
    raw = mail(
        subject="Zugang",
        extra="Cc: Bob <bob@mueller-logistik.de>, support@support.example.com\r\n",
    )
    created = as_json(mailgate(config_path, "ingest", stdin=raw))
    tid = str(created["ticket"])
    detail = as_json(mailgate(config_path, "tickets", "show", tid, "--json"))
    assert detail["participants"] == ["bob@mueller-logistik.de"]
    assert detail["routing"]["reason"] == created["reason"]
    assert detail["solved_at"] is None and detail["follow_up_of"] is None
    assert detail["created_at"].endswith("+00:00")
    [comment] = detail["comments"]
    assert comment["author"] == "anna@mueller-logistik.de" and comment["public"] is True
    assert comment["message_id"] == created["message_id"]

    solved = as_json(mailgate(config_path, "tickets", "set", tid, "--status", "solved", "--json"))
    assert solved["status"] == "solved"
    detail = as_json(mailgate(config_path, "tickets", "show", tid, "--json"))
    assert detail["solved_at"] is not None
    moved = as_json(mailgate(config_path, "tickets", "set", tid, "--org", "agentur blau", "--json"))
    assert moved["organization"] == "Agentur Blau"
    assert as_json(mailgate(config_path, "tickets", "list", "--org", "Agentur Blau", "--json"))
    assert as_json(mailgate(config_path, "tickets", "list", "--status", "open", "--json")) == []

    assert mailgate(config_path, "tickets", "set", tid, "--status", "closed").returncode == 0
    refused = mailgate(config_path, "tickets", "set", tid, "--org", "Müller Logistik GmbH")
    assert refused.returncode == 1
    assert b"closed: its requester and organization can no longer change" in refused.stderr
    refused = mailgate(config_path, "tickets", "set", tid, "--requester", "x@example.com")
    assert refused.returncode == 1
    detail = as_json(mailgate(config_path, "tickets", "show", tid, "--json"))
    assert (detail["organization"], detail["requester"]) == (
        "Agentur Blau",
        "anna@mueller-logistik.de",
    )


def test_tickets_errors_are_one_line(config_path: Path) -> None:
    assert mailgate(config_path, "init-db").returncode == 0
    proc = mailgate(config_path, "tickets", "show", "999")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "mailgate: error: ticket 999 not found"
    proc = mailgate(config_path, "tickets", "list", "--org", "Gibtsnicht")
    assert proc.returncode == 1 and b"organization 'Gibtsnicht' not found" in proc.stderr


def test_human_readable_output(config_path: Path) -> None:
    as_json(mailgate(config_path, "ingest", stdin=mail(subject="Server down")))
    table = mailgate(config_path, "tickets", "list").stdout.decode()
    assert table.splitlines()[0].split()[:4] == ["ID", "STATUS", "ORGANIZATION", "REQUESTER"]
    assert "Server down" in table
    shown = mailgate(config_path, "tickets", "show", "1").stdout.decode()
    assert shown.startswith("Ticket #1: Server down")
    assert "der Drucker druckt nicht." in shown


def test_metrics_and_health_endpoints(make_config: Callable[..., tuple[Config, Path]]) -> None:
    """With [metrics] port set, serve answers /metrics and /healthz over HTTP."""
    _, path = make_config({**AUTO_WORKERS, "metrics": {"port": 0}}, name="metrics.toml")
    daemon = Daemon(path)
    try:
        port = int(daemon.wait_for(r"http://127\.0\.0\.1:(\d+)/metrics").group(1))
        send(daemon.port, mail())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert (reply.status, reply.read()) == (200, b"ok\n")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'mailgate_messages_total{action="created"} 1.0' in text
        assert "mailgate_ingest_seconds_count 1.0" in text
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0


def test_sigkill_under_load_loses_no_accepted_mail(
    make_config: Callable[..., tuple[Config, Path]],
) -> None:
    """Kill -9 mid-stream: every mail that got 250 is stored exactly once after restart."""
    overlay = {**AUTO_WORKERS, "limits": {"tickets_per_hour": 1000}}
    _, config_path = make_config(overlay, name="kill.toml")
    daemon = Daemon(config_path)
    accepted: list[str] = []
    state = {"port": daemon.port, "stop": False}
    under_way = threading.Event()  # a good part of the load is accepted: time to kill

    def load() -> None:
        pending = [f"<kill-{i}@mueller-logistik.de>" for i in range(80)]
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            message_id = pending[0]
            try:
                with smtplib.SMTP("127.0.0.1", state["port"], timeout=10) as client:
                    client.sendmail(
                        "anna@mueller-logistik.de",
                        ["support@support.example.com"],
                        mail(subject=f"Last {message_id}", message_id=message_id),
                    )
                accepted.append(message_id.strip("<>"))
                pending.pop(0)
                if len(accepted) == 25:
                    under_way.set()
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the server is down: retry, as an MTA would

    sender = threading.Thread(target=load)
    sender.start()
    assert under_way.wait(120)
    daemon.proc.kill()  # SIGKILL, no chance to clean up
    daemon.proc.wait(10)
    restarted = Daemon(config_path)
    state["port"] = restarted.port
    sender.join(150)
    try:
        assert len(accepted) == 80
        listed = as_json(mailgate(config_path, "tickets", "list", "--json"))
        stats = as_json(mailgate(config_path, "stats", "--json"))
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
        restarted.proc.wait(30)
    subjects = Counter(t["subject"] for t in listed)
    assert {f"Last <{m}>" for m in accepted} <= set(subjects)
    assert set(subjects.values()) == {1}
    assert stats["ledger"]["total"] == len(listed) == 80


def test_serve_delivers_the_outbox_on_its_schedule(
    make_config: Callable[..., tuple[Config, Path]], tmp_path: Path
) -> None:
    """The scheduler inside serve sends the acknowledgement into the Maildir by itself."""
    _, path = make_config({"jobs": {"outbox_interval": "1s"}}, name="jobs.toml")
    daemon = Daemon(path)
    try:
        send(daemon.port, mail(subject="Bitte Rueckruf"))
        maildir = tmp_path / "outbox" / "new"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(maildir.glob("*"))) < 3:
            time.sleep(0.1)
        delivered = sorted(p.read_bytes() for p in maildir.glob("*"))
        assert len(delivered) == 3  # acknowledgement, the follower's and the agent's notices
        assert all(b"Subject: [#1] Bitte Rueckruf" in m for m in delivered)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0


def test_a_closed_pipe_ends_quietly(config_path: Path) -> None:
    """`mailgate tickets list | head -1`: the reader goes away first; exit 0, nothing on stderr.

    A real process, as the interpreter's own final flush of stdout is part of the contract.
    """
    as_json(mailgate(config_path, "ingest", stdin=mail(subject="Viele Zeilen")))
    proc = subprocess.Popen(
        [*MAILGATE, "--config", str(config_path), "tickets", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # closed before the first write: every write meets EPIPE
    err = proc.stderr.read()
    assert proc.wait(60) == 0, err
    assert err == b""


@pytest.mark.parametrize(
    "argv",
    [("--bogus",), ("tickets", "--bogus"), ("tickets", "list", "--bogus"), ("--bogus", "stats")],
)
def test_an_unknown_flag_is_named(config_path: Path, argv: tuple[str, ...]) -> None:
    proc = mailgate(config_path, *argv)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines()[-1] == (
        "mailgate: error: unrecognized arguments: --bogus"
    )


def test_a_missing_command_or_action_is_named(config_path: Path) -> None:
    proc = mailgate(config_path)
    assert proc.returncode == 2 and proc.stderr.endswith(b"required: COMMAND\n")
    proc = mailgate(config_path, "outbox")
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines()[-1] == (
        "mailgate outbox: error: the following arguments are required: ACTION"
    )


def _columns(table: str) -> list[list[str]]:
    """The rows of a text table, split at runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]


def test_lists_have_a_header_row_and_aligned_columns(config_path: Path) -> None:
    as_json(mailgate(config_path, "ingest", stdin=mail(subject="Tabelle")))
    mailgate(config_path, "ingest", stdin=b"\x00\xff kein Mail")

    outbox = mailgate(config_path, "outbox", "list").stdout.decode()
    lines = outbox.splitlines()
    assert _columns(outbox)[0] == ["ID", "STATUS", "KIND", "TICKET", "TRIES", "TO", "LAST ERROR"]
    assert len(lines) == 4  # the acknowledgement, the follower's and the agent's notices
    starts = {line.index("#1") for line in lines[1:]}
    assert starts == {lines[0].index("TICKET")}  # one column, one start
    assert {line.index("pending") for line in lines[1:]} == {lines[0].index("STATUS")}

    quarantine = mailgate(config_path, "quarantine", "list").stdout.decode()
    header, row = quarantine.splitlines()
    assert _columns(quarantine)[0] == ["ID", "RECEIVED (UTC)", "SIZE", "FROM", "REASON"]
    assert row.index("unparseable") == header.index("REASON")

    follow = mailgate(config_path, "follow", "list").stdout.decode()
    rows = _columns(follow)
    assert rows[0] == ["EMAIL", "ORGANIZATION", "SOURCE"]
    assert ["chef@mueller-logistik.de", "Müller Logistik GmbH", "config"] in rows
    lines = follow.splitlines()
    assert {line.index("config") for line in lines[1:]} == {lines[0].index("SOURCE")}
    # JSON stays as it was: a list of objects, no header.
    assert set(as_json(mailgate(config_path, "follow", "list", "--json"))[0]) == {
        "email",
        "organization",
        "source",
    }


def test_a_duplicate_names_the_ticket_of_the_first_copy(config_path: Path) -> None:
    """A redelivery (here via another relay, LF line endings) answers with the first ticket."""
    raw = mail(subject="Zweimal", message_id="<twice-1@mueller-logistik.de>")
    first = as_json(mailgate(config_path, "ingest", stdin=raw))
    relayed = b"Received: from mx2.example by mx.test; Thu, 26 Nov 2026 10:01:00 +0000\r\n" + raw
    again = as_json(mailgate(config_path, "ingest", stdin=relayed.replace(b"\r\n", b"\n")))
    assert (again["action"], again["ticket"], again["organization"]) == (
        "duplicate",
        first["ticket"],
        "Müller Logistik GmbH",
    )
    # A first copy that made no ticket (kept in quarantine) has none to name.
    mailgate(config_path, "ingest", stdin=b"\x00\xff kein Mail")
    again = json.loads(mailgate(config_path, "ingest", stdin=b"\x00\xff kein Mail").stdout)
    assert (again["action"], again["ticket"], again["organization"]) == ("duplicate", None, None)


def test_a_sqlite_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    """A typo in the path is an error, never a new, empty database somewhere."""
    path = tmp_path / "typo.toml"
    missing_dir = tmp_path / "nicht-da"
    path.write_text(f'[database]\nurl = "sqlite:///{missing_dir}/mailgate.db"\n')
    for argv in (("init-db",), ("ingest",), ("tickets", "list"), ("stats",)):
        proc = mailgate(path, *argv, stdin=mail())
        # ingest behind an MTA defers the mail until the URL is mended (75); the others: 2
        assert proc.returncode == (75 if argv == ("ingest",) else 2), (argv, proc.stderr)
        assert proc.stderr.decode() == (
            f"mailgate: error: config error: [database].url: the directory {missing_dir} does "
            f"not exist (database file {missing_dir}/mailgate.db); create it, or correct the URL\n"
        )
    assert not missing_dir.exists()

    # The directory is there, the file is not: reading commands say so and create nothing.
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/leer.db"\n')
    for argv in (("tickets", "list"), ("stats",), ("outbox", "list"), ("jobs", "run")):
        proc = mailgate(path, *argv)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert proc.stderr.decode().startswith(
            f"mailgate: error: database file {tmp_path}/leer.db does not exist"
        )
    assert not (tmp_path / "leer.db").exists()
    # init-db and ingest create the file (only the file).
    assert mailgate(path, "init-db").returncode == 0
    assert (tmp_path / "leer.db").exists()
    assert mailgate(path, "tickets", "list").stdout == b"no tickets\n"


def _with_attachments(parts: list[tuple[str, bytes]], message_id: str) -> bytes:
    """A multipart mail carrying ``parts`` (file name, content) as base64 attachments."""
    import base64

    raw = (
        b"From: Anna <anna@mueller-logistik.de>\r\nTo: support@support.example.com\r\n"
        b"Subject: Anlagen\r\nMessage-ID: " + message_id.encode() + b"\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\nAnbei.\r\n"
    )
    for name, content in parts:
        raw += (
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="'
            + name.encode()
            + b'"\r\n\r\n'
            + base64.encodebytes(content).replace(b"\n", b"\r\n")
        )
    return raw + b"--b1--\r\n"


def test_tickets_attachment_writes_it_byte_for_byte(
    config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By number or name, to a file or stdout; a large one (stored piecewise) comes back whole."""
    every_byte = bytes(range(256)) * 4 + b"\r\n\n\r\x00"
    large = bytes(range(256)) * (6 * 1024)  # 1.5 MB: on SQLite written in pieces
    raw = _with_attachments(
        [("daten.bin", every_byte), ("../../etc/logs.gz", large), ("daten.bin", b"zwei")],
        "<anlagen-1@mueller-logistik.de>",
    )
    tid = str(as_json(mailgate(config_path, "ingest", stdin=raw))["ticket"])

    shown = mailgate(config_path, "tickets", "show", tid).stdout.decode()
    first = f"  [attachment 1] daten.bin (application/octet-stream, {len(every_byte)} bytes)"
    assert first in shown
    assert f"  [attachment 2] logs.gz (application/octet-stream, {len(large)} bytes)" in shown
    assert "  [attachment 3] daten.bin" in shown
    detail = as_json(mailgate(config_path, "tickets", "show", tid, "--json"))
    [listed] = [c["attachments"] for c in detail["comments"]]
    assert [(a["number"], a["filename"], a["size"]) for a in listed] == [
        (1, "daten.bin", len(every_byte)),
        (2, "logs.gz", len(large)),
        (3, "daten.bin", 4),
    ]
    assert set(listed[0]) == {"number", "filename", "content_type", "size", "sha256"}

    out = mailgate(config_path, "tickets", "attachment", tid, "1", "-o", "-")
    assert (out.returncode, out.stdout, out.stderr) == (0, every_byte, b"")
    target = tmp_path / "gespeichert.gz"
    saved = mailgate(config_path, "tickets", "attachment", tid, "logs.gz", "-o", str(target))
    assert saved.returncode == 0, saved.stderr
    assert target.read_bytes() == large
    assert mailgate(config_path, "tickets", "attachment", tid, "3", "-o", "-").stdout == b"zwei"

    # Without -o: its own name (the last part only), here, never replacing a file.
    monkeypatch.chdir(tmp_path)
    assert mailgate(config_path, "tickets", "attachment", tid, "2").returncode == 0
    assert (tmp_path / "logs.gz").read_bytes() == large
    again = mailgate(config_path, "tickets", "attachment", tid, "2")
    assert again.returncode == 1 and b"logs.gz exists; give -o FILE" in again.stderr

    for argv, message in [
        ((tid,), "has 3 attachments: give a number from 1 to 3"),
        ((tid, "daten.bin"), "has 2 attachments named 'daten.bin': give its number (1, 3)"),
        ((tid, "4"), "has no attachment '4' (numbers 1 to 3)"),
        (("999",), "ticket 999 not found"),
    ]:
        proc = mailgate(config_path, "tickets", "attachment", *argv, "-o", "-")
        assert proc.returncode == 1 and proc.stdout == b"", argv
        assert message in proc.stderr.decode(), (argv, proc.stderr)
