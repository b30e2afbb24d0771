"""mailgate behind a real Postfix, as the README's deployment recipes set it up.

One private Postfix instance per module (its own config, queue and data directories, loopback
only, a free port; the system's Postfix is never touched) relays ``support.example.com`` over
LMTP to a running ``mailgate serve`` and ``pipe.example.com`` through pipe(8) into
``mailgate ingest``, relays mailgate's notifications to a local sink, and removes forged
``Authentication-Results`` headers with its own authserv-id (the README's recipe). Mail is
sent with smtplib into Postfix; the tests wait on the database, the Postfix log and the
queue, each with a deadline.

Skipped when Postfix is not installed, unless ``$MAILGATE_REQUIRE_POSTFIX`` is set (CI sets
it, and installs Postfix).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.db.records import raw_mail
from mailgate.models import LedgerEntry
from mailgate.store import Store

from .conftest import BASE_CONFIG, ROOT, _merge, mail, run_cli, toml_dumps, wait_until
from .sink import Sink
from .test_cli import Daemon

pytestmark = pytest.mark.postfix

POSTFIX = shutil.which("postfix") or shutil.which("postfix", path="/usr/sbin:/usr/local/sbin")
REQUIRE_POSTFIX = bool(os.environ.get("MAILGATE_REQUIRE_POSTFIX"))
PIPE_USER = "nobody"  # pipe(8) refuses to run a command as root
SUPPORT = "support@support.example.com"
PIPE = "support@pipe.example.com"
SENDER = "anna@mueller-logistik.de"
DEADLINE = 60.0


def _postfix_problem() -> str | None:
    if POSTFIX is None:
        return (
            "Postfix is not installed (no `postfix` in PATH or /usr/sbin); apt-get install postfix"
        )
    if os.geteuid() != 0:
        return "a private Postfix instance is started as root (its master runs as root)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
lmtp      unix  - - n -  - lmtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
mailgate  unix  - n n -  - pipe
  flags=Rq user={user}
  argv={mailgate} --config {config} ingest --mail-from=${{sender}} --rcpt ${{recipient}}
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
maillog_file = {base}/log/postfix.log
maillog_file_prefixes = {base}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = support.example.com, pipe.example.com
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
# Long queue IDs never repeat, so the log lines of one mail are found by its ID alone.
enable_long_queue_ids = yes
transport_maps = texthash:{base}/etc/transport
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = yes
smtp_host_lookup = native
lmtp_host_lookup = native
header_checks = regexp:{base}/etc/header_checks
"""

# RFC 8601 section 5: the MTA removes incoming Authentication-Results headers carrying its
# own authserv-id (here mx.postfix.test, its hostname), so that only its own milters' count.
# The id exactly, in any case, after optional comments, followed by a space, ";", "(" or
# the end; never a longer id such as mx.postfix.test.evil. The README shows this recipe.
HEADER_CHECKS = (
    r"/^Authentication-Results:[[:space:]]*(\([^()]*\)[[:space:]]*)*"
    r"mx\.postfix\.test([[:space:];(]|$)/ IGNORE"
    "\n"
)


@dataclass
class Postfix:
    """A private Postfix: ``postfix -c DIR``, its smtpd on ``port``, its log in a file."""

    base: Path
    port: int

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def log(self) -> Path:
        return self.base / "log" / "postfix.log"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        tool = Path(POSTFIX or "postfix").with_name(args[0])
        return subprocess.run(
            [str(tool), "-c", str(self.etc), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def send(self, raw: bytes, rcpts: list[str], mail_from: str = SENDER) -> str:
        """Send into Postfix's smtpd; the queue ID it answers with."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail(mail_from)
            for rcpt in rcpts:
                code, reply = client.rcpt(rcpt)
                assert code == 250, reply
            code, reply = client.data(raw)
        assert code == 250, reply
        match = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
        assert match, reply
        return match.group(1).decode()

    def lines(self, queue_id: str) -> list[str]:
        """The log lines of one queued mail."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if f" {queue_id}: " in line]

    def wait_log(self, queue_id: str, pattern: str, count: int = 1) -> list[str]:
        """Wait until ``count`` log lines of the mail match ``pattern``; all its lines."""

        def seen() -> bool:
            return sum(bool(re.search(pattern, x)) for x in self.lines(queue_id)) >= count

        assert wait_until(seen, DEADLINE), "\n".join(self.lines(queue_id)) or self.tail()
        return self.lines(queue_id)

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-40:])

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one JSON object per queued mail."""
        proc = self.command("postqueue", "-j")
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        proc = self.command("postqueue", "-f")
        assert proc.returncode == 0, proc.stderr


def pipe_command(pipe_user: str) -> list[str]:
    """How pipe(8) runs ``mailgate`` as ``pipe_user``: this venv's console script when that
    user can execute it; else (the interpreter lives where only root may go, as pyenv's under
    /root) the system ``python3`` of the same version with this checkout and venv on its
    path, which runs the same code with the same libraries."""
    own = [str(Path(sys.executable).parent / "mailgate")]
    if _runs_as(pipe_user, [*own, "--version"]):
        return own
    import sysconfig

    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    paths = sysconfig.get_paths()
    path = os.pathsep.join(dict.fromkeys([str(ROOT), paths["purelib"], paths["platlib"]]))
    fallback = ["/usr/bin/env", f"PYTHONPATH={path}", system, "-m", "mailgate"]
    if _runs_as(pipe_user, [*fallback, "--version"]):
        return fallback
    pytest.fail(f"user {pipe_user} can run neither {own[0]} nor {system} with mailgate")


def _runs_as(user: str, argv: list[str]) -> bool:
    try:
        proc = subprocess.run(argv, user=user, capture_output=True, timeout=60, cwd="/")
    except OSError:
        return False
    return proc.returncode == 0


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)


@dataclass
class Site:
    """The Postfix instance, mailgate behind it, and the sink its notifications reach."""

    mta: Postfix
    lmtp_config: Path
    lmtp_port: int
    pipe_config: Path
    pipe_dir: Path
    pipe_argv: list[str]
    sink: Sink
    daemon: Daemon | None = None

    def start_mailgate(self) -> None:
        self.daemon = Daemon(self.lmtp_config)
        assert self.daemon.port == self.lmtp_port

    def stop_mailgate(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGTERM)
        assert self.daemon.proc.wait(DEADLINE) == 0
        self.daemon = None

    def tickets(self, config: Path) -> list[dict[str, Any]]:
        listed = run_cli(config, "tickets", "list", "--json")
        if config == self.pipe_config:  # what root created there is the pipe user's again
            _chown_tree(self.pipe_dir, PIPE_USER)
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, Any]] = json.loads(listed.stdout)
        return rows

    def wait_tickets(self, config: Path, subject: str, count: int = 1) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            return [t for t in self.tickets(config) if t["subject"] == subject]

        assert wait_until(lambda: len(found()) >= count, DEADLINE), self.mta.tail()
        return found()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    problem = _postfix_problem()
    if problem is not None:
        if REQUIRE_POSTFIX:
            pytest.fail(f"MAILGATE_REQUIRE_POSTFIX is set but {problem}")
        pytest.skip(problem)
    # Postfix's daemons run as the user postfix and reach their directories by path, and the
    # pipe runs as PIPE_USER: pytest's own temporary folder (mode 0700) is closed to both.
    base = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
    base.chmod(0o755)
    own = tmp_path_factory.mktemp("postfix")  # mailgate serve's files: root's only
    sink = Sink().start()
    mta_port, lmtp_port = free_port(), free_port()
    lmtp_config = own / "lmtp.toml"
    data = _merge(
        BASE_CONFIG,
        {
            # As deployed: ingest worker processes answer LMTP after their commit.
            "server": {"protocol": "lmtp", "port": lmtp_port, "workers": "auto"},
            "database": {"url": f"sqlite:///{own / 'mailgate.db'}"},
            "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": mta_port},
            "jobs": {"outbox_interval": "1s"},
        },
    )
    lmtp_config.write_text(toml_dumps(data), encoding="utf-8")
    pipe_dir = base / "pipe"
    pipe_dir.mkdir()
    pipe_config = pipe_dir / "mailgate.toml"
    data = _merge(
        BASE_CONFIG,
        {
            "mail": {"domains": ["pipe.example.com"], "address": PIPE},
            "database": {"url": f"sqlite:///{pipe_dir / 'mailgate.db'}"},
            "outbound": {"maildir": str(pipe_dir / "outbox")},
        },
    )
    pipe_config.write_text(toml_dumps(data), encoding="utf-8")
    pipe_config.chmod(0o644)
    _chown_tree(pipe_dir, PIPE_USER)
    argv = pipe_command(PIPE_USER)
    # The database is created by the user that writes it, as the README asks.
    init = subprocess.run(
        [*argv, "--config", str(pipe_config), "init-db"],
        user=PIPE_USER,
        capture_output=True,
        timeout=120,
        cwd="/",
    )
    assert init.returncode == 0, init.stderr

    for name in ("etc", "spool", "data", "log"):
        (base / name).mkdir(mode=0o755)
    shutil.chown(base / "data", "postfix")  # the master's lock, written as postfix
    etc = base / "etc"
    (etc / "master.cf").write_text(
        MASTER_CF.format(
            port=mta_port,
            user=PIPE_USER,
            mailgate=" ".join(argv),
            config=pipe_config,
        )
    )
    (etc / "main.cf").write_text(MAIN_CF.format(base=base))
    (etc / "header_checks").write_text(HEADER_CHECKS)
    (etc / "transport").write_text(
        f"support.example.com lmtp:inet:127.0.0.1:{lmtp_port}\n"
        "pipe.example.com mailgate:\n"
        f"mueller-logistik.de smtp:[127.0.0.1]:{sink.port}\n"
    )
    mta = Postfix(base, mta_port)
    started = mta.command("postfix", "start")
    assert started.returncode == 0, started.stdout + started.stderr + mta.tail()
    site = Site(mta, lmtp_config, lmtp_port, pipe_config, pipe_dir, argv, sink)
    try:
        assert wait_until(lambda: _accepts(mta_port), DEADLINE), mta.tail()
        site.start_mailgate()
        yield site
    finally:
        if site.daemon is not None:
            site.stop_mailgate()
        mta.command("postfix", "stop")
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def no_bounce(lines: list[str]) -> bool:
    return not any("status=bounced" in x or "non-delivery" in x for x in lines)


def test_a_plain_mail_reaches_mailgate_over_lmtp_and_through_the_pipe(site: Site) -> None:
    for config, rcpt in ((site.lmtp_config, SUPPORT), (site.pipe_config, PIPE)):
        subject = f"Drucker kaputt ({rcpt})"
        queue_id = site.mta.send(mail(subject=subject, to=rcpt), [rcpt])
        lines = site.mta.wait_log(queue_id, r"status=sent")
        assert no_bounce(lines), lines
        (ticket,) = site.wait_tickets(config, subject)
        assert ticket["organization"] == "Müller Logistik GmbH"


def test_a_bounce_with_the_empty_sender_goes_through_the_pipe(site: Site) -> None:
    """``MAIL FROM:<>`` reaches the pipe as ``--mail-from=MAILER-DAEMON`` and is answered 0."""
    queue_id = site.mta.send(mail(subject="Undeliverable", to=PIPE), [PIPE], mail_from="")
    lines = site.mta.wait_log(queue_id, r"status=sent")
    assert no_bounce(lines), lines
    assert any("from=<>" in x for x in lines), lines


@pytest.mark.parametrize("transport", ["lmtp", "pipe"])
def test_a_mail_to_two_recipients_is_one_ticket_and_no_bounce(site: Site, transport: str) -> None:
    domain = "support.example.com" if transport == "lmtp" else "pipe.example.com"
    config = site.lmtp_config if transport == "lmtp" else site.pipe_config
    rcpts = [f"support@{domain}", f"help@{domain}"]
    subject = f"Zwei Empfänger über {transport}"
    queue_id = site.mta.send(mail(subject=subject, to=", ".join(rcpts)), rcpts)
    lines = site.mta.wait_log(queue_id, r"status=sent", count=2)
    site.mta.wait_log(queue_id, r": removed")
    print(
        f"\nPostfix log, two recipients over {transport}:\n" + "\n".join(site.mta.lines(queue_id))
    )
    assert no_bounce(site.mta.lines(queue_id)), lines
    assert len(site.wait_tickets(config, subject)) == 1
    assert len([t for t in site.tickets(config) if t["subject"] == subject]) == 1


def test_an_outage_defers_and_every_mail_arrives_once_after_it(site: Site) -> None:
    site.stop_mailgate()
    try:
        subjects = [f"Während der Wartung {n}" for n in range(5)]
        ids = [site.mta.send(mail(subject=s), [SUPPORT]) for s in subjects]
        for queue_id in ids:
            site.mta.wait_log(queue_id, r"status=deferred")
        assert {q["queue_id"] for q in site.mta.queue()} >= set(ids)
    finally:
        site.start_mailgate()
    site.mta.flush()
    for queue_id in ids:
        site.mta.wait_log(queue_id, r": removed")
    print("\nPostfix log, outage:\n" + "\n".join(x for q in ids for x in site.mta.lines(q)))
    for queue_id in ids:
        lines = site.mta.lines(queue_id)
        assert sum("status=sent" in x for x in lines) == 1, lines
        assert no_bounce(lines), lines
    assert not {q["queue_id"] for q in site.mta.queue()} & set(ids)
    tickets = site.tickets(site.lmtp_config)
    for subject in subjects:
        assert len([t for t in tickets if t["subject"] == subject]) == 1


def test_a_database_the_pipe_cannot_write_defers_and_does_not_bounce(site: Site) -> None:
    subject = "Datenbank schreibgeschützt"
    _chown_tree(site.pipe_dir, "root")  # the pipe user may read but no longer write
    try:
        queue_id = site.mta.send(mail(subject=subject, to=PIPE), [PIPE])
        lines = site.mta.wait_log(queue_id, r"status=deferred")
        print("\nPostfix log, read-only database:\n" + "\n".join(lines))
        assert no_bounce(lines), lines
        assert any("temporary failure" in x for x in lines), lines
        assert queue_id in {q["queue_id"] for q in site.mta.queue()}
    finally:
        _chown_tree(site.pipe_dir, PIPE_USER)
    site.mta.flush()
    lines = site.mta.wait_log(queue_id, r"status=sent")
    assert no_bounce(lines), lines
    assert len(site.wait_tickets(site.pipe_config, subject)) == 1


def test_notifications_are_relayed_through_the_same_postfix(site: Site) -> None:
    subject = "Bitte um Rückmeldung"
    site.mta.send(mail(subject=subject), [SUPPORT])
    (ticket,) = site.wait_tickets(site.lmtp_config, subject)

    def notified() -> list[Any]:
        return [
            r
            for r in site.sink.received
            if SENDER in r.rcpt_to and f"#{ticket['id']}" in str(r.message["Subject"])
        ]

    assert wait_until(notified, DEADLINE), site.mta.tail()
    (note,) = notified()
    assert note.mail_from.startswith("support")
    received = str(note.message.get_all("Received", [])[0])
    assert "mx.postfix.test" in received  # it went through Postfix, not straight to the sink


FORGED = (
    "Authentication-Results: mx.postfix.test; dmarc=pass header.from=support.example.com",
    "Authentication-Results: MX.Postfix.TEST (forged); dkim=pass header.d=support.example.com",
    "Authentication-Results:\r\n mx.postfix.test;\r\n\tdkim=pass header.d=support.example.com",
    "Authentication-Results: (comment) mx.postfix.test 1; dmarc=pass header.from=a.example",
)
FOREIGN = (
    "Authentication-Results: other.example; dkim=pass header.d=support.example.com",
    "Authentication-Results: mx.postfix.test.evil; dkim=pass header.d=support.example.com",
)


def stored_raw(config: Path, message_id: str) -> bytes | None:
    """The raw mail mailgate's ledger keeps for ``message_id``, once it is there."""
    store = Store(f"sqlite:///{config.parent / 'mailgate.db'}", 5.0)
    try:
        with store.transaction() as s:
            entry = s.scalars(
                select(LedgerEntry).where(LedgerEntry.message_id == message_id)
            ).first()
            return raw_mail(s, entry) if entry is not None else None
    finally:
        store.close()


def test_postfix_removes_authentication_results_with_its_own_authserv_id(site: Site) -> None:
    """RFC 8601 section 5 with the README's header_checks recipe: a forged header with our
    authserv-id (any case, folded, after a comment) never reaches mailgate; one with
    another id, or a longer one, arrives as sent."""
    headers = "".join(f"{h}\r\n" for h in (*FORGED, *FOREIGN))
    raw = mail(subject="Gefälscht", message_id="<forged-ar@mueller-logistik.de>", extra=headers)
    queue_id = site.mta.send(raw, [SUPPORT])
    assert no_bounce(site.mta.wait_log(queue_id, r"status=sent"))
    assert wait_until(
        lambda: stored_raw(site.lmtp_config, "forged-ar@mueller-logistik.de"), DEADLINE
    )
    stored = stored_raw(site.lmtp_config, "forged-ar@mueller-logistik.de")
    assert stored is not None
    head = re.sub(r"\r?\n[ \t]+", " ", stored.split(b"\r\n\r\n", 1)[0].decode())
    results = [x for x in head.splitlines() if x.lower().startswith("authentication-results:")]
    print("\nAuthentication-Results mailgate stored:\n" + "\n".join(results))
    assert results == list(FOREIGN)
    assert "Received: from client.test" in head  # it did come through Postfix


def test_the_readme_shows_the_tested_header_checks_rule() -> None:
    """The README's recipe is the rule this module proves, for the README's authserv-id."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADER_CHECKS.replace(r"mx\.postfix\.test", r"mx\.example\.com") in readme
    assert "header_checks = regexp:/etc/postfix/header_checks" in readme
