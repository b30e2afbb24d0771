"""The vault (issue #20, items 3 and 4): credentials in mail kept encrypted, each behind
one-time links in the agents' notifications, revealed once on mailgate's HTTP listener.

Real parts throughout: mail over SMTP to the listener, the outbox delivered to a maildir,
the aiohttp listener on its own event loop, requests over a real socket, both databases.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config, ConfigProblems, parse_config
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox, Secret, SecretLink, Ticket
from mailgate.store import Store
from mailgate.vault.crypto import token_hash
from mailgate.vault.pages import FAILURES, SecretPages
from mailgate.web import start_http

from .conftest import BASE_CONFIG, Clock, mail, open_store, run_cli, send

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
VAULT = {
    "secrets": {"key": KEY, "base_url": "https://support.example.com:8443"},
    "metrics": {"port": 0},
}
BODY = (
    "Hallo,\n\nich komme nicht mehr rein. Das Passwort ist geheim123\n"
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n\nGruß Anna\n"
)
VALUES = ("geheim123", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
LINK = re.compile(r"\[secret (\d+)\] https://support\.example\.com:8443/secret/([A-Za-z0-9_-]+)")


@pytest.fixture
def config(make_config: Callable[..., tuple[Config, Path]]) -> Config:
    """The test config with the vault on (a key, the HTTP listener)."""
    return make_config(VAULT)[0]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


class Http:
    """mailgate's HTTP listener with the vault's pages, on its own loop in a thread."""

    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def healthy() -> str | None:
            return None

        pages = SecretPages(lambda: self.config, store, clock)
        started = asyncio.run_coroutine_threadsafe(
            start_http("127.0.0.1", 0, healthy, pages.routes), self.loop
        ).result(10)
        self.runner, self.port = started

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.port}/secret/{token}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def http(config: Config, store: Store, clock: Clock) -> Iterator[Http]:
    listener = Http(config, store, clock)
    try:
        yield listener
    finally:
        listener.close()


def request(url: str, form: dict[str, str] | None = None, lang: str = "en") -> tuple[int, Any, str]:
    """Status, headers and text of a GET (or, with ``form``, a POST) over a real socket."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, headers={"Accept-Language": lang})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def page_token(html: str) -> str:
    found = re.search(r'name="page_token" value="([0-9a-f]+)"', html)
    assert found is not None, html
    return found.group(1)


def readable(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    texts = [f"{key}: {value}" for key, value in message.items()]
    texts += [p.get_content() for p in message.walk() if p.get_content_maintype() == "text"]
    return "\n".join(texts)


def sent_mail(store: Store) -> list[tuple[str, list[str], str]]:
    """Every delivered notification: kind, recipients, headers and text parts."""
    with store.transaction() as s:
        rows = s.scalars(select(Outbox).order_by(Outbox.id)).all()
        return [(r.kind, list(r.recipients), readable(r.message or b"")) for r in rows]


def links(text: str) -> dict[int, str]:
    """The one-time links in a notification's text part: number → token."""
    return {int(n): token for n, token in LINK.findall(text)}


def new_ticket_with_secrets(config: Config, store: Store, clock: Clock, port: int) -> int:
    assert send(port, mail(subject="Kein Zugang", body=BODY)) == {}
    Jobs(store, config).deliver_outbox(clock())
    with store.transaction() as s:
        return s.scalars(select(Ticket)).one().id


# --------------------------------------------------------------------------------------
# the vault, end to end
# --------------------------------------------------------------------------------------


def test_round_trip_secret_sealed_linked_revealed_once(
    config: Config, store: Store, clock: Clock, server: int
) -> None:
    """A customer's credentials become ``[secret N]`` in the ticket, sealed at rest; only
    the agent's mail carries a link per secret; the link's page shows a button, its POST
    reveals the value once and notes who on the ticket; the link then says "already used"."""
    tid = new_ticket_with_secrets(config, store, clock, server)
    with store.transaction() as s:
        [comment] = s.scalars(select(Comment).where(Comment.ticket_id == tid)).all()
        rows = s.scalars(select(Secret).order_by(Secret.number)).all()
        assert [(r.number, r.comment_id, r.revealed_at) for r in rows] == [
            (1, comment.id, None),
            (2, comment.id, None),
        ]
        for row, value in zip(rows, VALUES, strict=True):
            assert row.ciphertext is not None and value.encode() not in row.ciphertext
            assert row.expires_at == clock() + config.secrets.ttl
        body = comment.body
    assert "Das Passwort ist [secret 1]" in body
    assert "aws_secret_access_key = [secret 2]" in body
    assert not any(value in body for value in VALUES)

    mails = sent_mail(store)
    kinds = sorted(kind for kind, _, _ in mails)
    assert kinds == ["agent_new_ticket", "new_ticket_follower", "secret_warning", "ticket_created"]
    for kind, _, text in mails:
        assert not any(value in text for value in VALUES), kind
        if kind != "agent_new_ticket":
            assert "/secret/" not in text, kind  # customers and followers get no link
    [agent_text] = [text for kind, _, text in mails if kind == "agent_new_ticket"]
    assert "Das Passwort ist [secret 1]" in agent_text
    tokens = links(agent_text)
    assert sorted(tokens) == [1, 2]
    with store.transaction() as s:
        stored = s.scalars(select(SecretLink).order_by(SecretLink.id)).all()
        assert [link.recipient for link in stored] == ["tech@support.example.com"] * 2
        assert {link.token_hash for link in stored} == {token_hash(t) for t in tokens.values()}
        assert not {link.token_hash for link in stored} & set(tokens.values())

    with http(config, store, clock) as listener:
        status, headers, html = request(listener.url(tokens[1]))
        assert status == 200 and "Secret 1 of ticket [#1]" in html and "geheim123" not in html
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        # Looking again changes nothing (a link scanner fetches it first).
        assert request(listener.url(tokens[1]))[0] == 200
        form = page_token(html)

        status, _, html = request(listener.url(tokens[1]), {"page_token": "0" * 64})
        assert status == 403 and "geheim123" not in html
        status, headers, html = request(listener.url(tokens[1]), {"page_token": form})
        assert status == 200 and '<pre id="value">geheim123</pre>' in html
        nonce = re.search(r'<script nonce="([^"]+)">', html)
        assert (
            nonce is not None and f"'nonce-{nonce.group(1)}'" in headers["Content-Security-Policy"]
        )

        status, _, html = request(listener.url(tokens[1]), {"page_token": form})
        assert status == 410 and "already used" in html and "geheim123" not in html
        status, _, html = request(listener.url(tokens[1]), lang="de")
        assert status == 410 and "bereits benutzt" in html
        # The other secret is still there.
        assert request(listener.url(tokens[2]))[0] == 200

    with store.transaction() as s:
        first = s.scalars(select(Secret).where(Secret.number == 1)).one()
        assert first.ciphertext is None and first.nonce is None
        assert (first.revealed_at, first.revealed_by) == (clock(), "tech@support.example.com")
        notes = s.scalars(
            select(Comment).where(Comment.ticket_id == tid, Comment.author_kind == "system")
        ).all()
        assert [(n.public, n.body) for n in notes] == [
            (
                False,
                "Secret 1 revealed by tech@support.example.com at 2026-11-26 10:00:00 UTC "
                "through a one-time link; the value is no longer stored.",
            )
        ]


def test_each_agent_gets_own_links_and_the_first_reveal_uses_the_secret(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock, tmp_path: Path
) -> None:
    """A customer's reply with a password goes to each agent in a mail of their own with
    links of their own; whoever reveals first is named, the other's link says used."""
    agents = {"addresses": ["tech@support.example.com", "ops@support.example.com"]}
    config, _ = make_config({**VAULT, "agents": agents})
    from mailgate.app import ServerThread

    with open_store(config, clock) as store:
        with ServerThread(config, store, clock) as thread:
            port = thread.server.port
            assert port is not None
            assert send(port, mail(subject="Drucker")) == {}
            reply = mail(subject="Re: [#1] Drucker", body="Der Zugang: Passwort: Sommer2026!\n")
            assert send(port, reply) == {}
        Jobs(store, config).deliver_outbox(clock())
        replies = [(to, text) for kind, to, text in sent_mail(store) if kind == "customer_reply"]
        assert sorted(to for to, _ in replies) == [
            ["ops@support.example.com"],
            ["tech@support.example.com"],
        ]
        tokens = {to[0]: links(text)[1] for to, text in replies}
        assert len(set(tokens.values())) == 2
        with http(config, store, clock) as listener:
            ops = tokens["ops@support.example.com"]
            status, _, html = request(
                listener.url(ops), {"page_token": page_token(request(listener.url(ops))[2])}
            )
            assert status == 200 and "Sommer2026!" in html
            status, _, html = request(listener.url(tokens["tech@support.example.com"]))
            assert status == 410 and "already used" in html
        with store.transaction() as s:
            assert s.scalars(select(Secret)).one().revealed_by == "ops@support.example.com"


def test_wrong_key_leaves_values_unreadable_with_a_clear_error(
    make_config: Callable[..., tuple[Config, Path]],
    config: Config,
    store: Store,
    clock: Clock,
    server: int,
) -> None:
    """Another key opens nothing: the page says the value cannot be decrypted (and keeps
    it), ``mailgate secrets check`` fails naming the key; the right key still works."""
    tid = new_ticket_with_secrets(config, store, clock, server)
    [agent_text] = [text for kind, _, text in sent_mail(store) if kind == "agent_new_ticket"]
    token = links(agent_text)[1]
    wrong, wrong_path = make_config(
        {**VAULT, "secrets": {**VAULT["secrets"], "key": OTHER_KEY}}, name="wrong.toml"
    )
    with http(wrong, store, clock) as listener:
        status, _, html = request(listener.url(token))
        assert status == 200
        status, _, html = request(listener.url(token), {"page_token": page_token(html)})
        assert status == 500 and "cannot be decrypted" in html and "Traceback" not in html
        assert "geheim123" not in html
    result = run_cli(wrong_path, "secrets", "check")
    assert result.returncode == 1
    assert b"2 of 2 stored secret(s) cannot be decrypted" in result.stderr
    assert b"[secrets] key" in result.stderr

    _, right_path = make_config(VAULT, name="right.toml")
    result = run_cli(right_path, "secrets", "check")
    assert result.returncode == 0 and b"opens all 2" in result.stdout
    with http(config, store, clock) as listener:
        html = request(listener.url(token))[2]
        status, _, html = request(listener.url(token), {"page_token": page_token(html)})
        assert status == 200 and "geheim123" in html
    with store.transaction() as s:
        assert s.get(Ticket, tid) is not None


def test_expired_links_say_so_and_purge_deletes_the_values(
    make_config: Callable[..., tuple[Config, Path]],
    config: Config,
    store: Store,
    clock: Clock,
    server: int,
) -> None:
    """After ``[secrets] ttl`` a link says "expired" and reveals nothing; ``mailgate secrets
    purge`` deletes the expired values (``--dry-run`` only names them)."""
    new_ticket_with_secrets(config, store, clock, server)
    [agent_text] = [text for kind, _, text in sent_mail(store) if kind == "agent_new_ticket"]
    token = links(agent_text)[1]
    with http(config, store, clock) as listener:
        form = page_token(request(listener.url(token))[2])
        clock.advance(days=7)
        status, _, html = request(listener.url(token))
        assert status == 410 and "expired" in html
        status, _, html = request(listener.url(token), {"page_token": form})
        assert status == 410 and "expired" in html and "geheim123" not in html

    _, path = make_config(VAULT, name="purge.toml")
    listed = run_cli(path, "secrets", "list", "--json")
    assert listed.returncode == 0 and b"geheim123" not in listed.stdout
    before = (clock() - timedelta(seconds=1)).isoformat()
    assert b"deleted 0 expired" in run_cli(path, "secrets", "purge", "--now", before).stdout
    now = clock().isoformat()
    dry = run_cli(path, "secrets", "purge", "--dry-run", "--now", now)
    assert dry.returncode == 0 and b"would delete 2 expired" in dry.stdout
    with store.transaction() as s:
        assert all(r.ciphertext is not None for r in s.scalars(select(Secret)))
    purged = run_cli(path, "secrets", "purge", "--now", now)
    assert purged.returncode == 0 and b"deleted 2 expired" in purged.stdout
    with store.transaction() as s:
        assert [r.ciphertext for r in s.scalars(select(Secret))] == [None, None]


def test_failed_look_ups_are_rate_limited_per_client(
    config: Config, store: Store, clock: Clock
) -> None:
    """Guessing links: past the limit a minute every request is answered 429, even a real
    link's; a minute later look-ups are answered again."""
    with http(config, store, clock) as listener:
        for _ in range(FAILURES):
            status, headers, _ = request(listener.url("A" * 43))
            assert status == 404 and headers["Cache-Control"] == "no-store"
        status, _, html = request(listener.url("B" * 43))
        assert status == 429 and "Too many" in html
        assert request(listener.url("short"))[0] == 429
        clock.advance(seconds=61)
        assert request(listener.url("C" * 43))[0] == 404


def test_metrics_and_health_carry_the_same_headers(
    config: Config, store: Store, clock: Clock
) -> None:
    """/healthz and /metrics keep their answers, with the listener's safety headers."""
    with http(config, store, clock) as listener:
        base = f"http://127.0.0.1:{listener.port}"
        status, headers, text = request(f"{base}/healthz")
        assert (status, text) == (200, "ok\n")
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        status, headers, text = request(f"{base}/metrics")
        assert status == 200 and "mailgate_messages_total" in text
        assert headers["Content-Type"].startswith("text/plain")
        assert request(f"{base}/nothing")[0] == 404


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------


def _parse(overlay: dict[str, Any]) -> Config:
    return parse_config({**BASE_CONFIG, **overlay})


def test_config_vault_follows_the_key_and_needs_the_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key turns the vault on (config or $MAILGATE_SECRETS_KEY); the vault needs the
    HTTP listener, a key of 32 bytes, and is off by default."""
    monkeypatch.delenv("MAILGATE_SECRETS_KEY", raising=False)
    assert not _parse({}).secrets.vault
    on = _parse(VAULT).secrets
    assert on.vault and on.key == bytes(range(32)) and on.ttl.days == 7
    assert KEY not in repr(on)
    assert not _parse({**VAULT, "secrets": {"key": KEY, "vault": False}}).secrets.vault
    monkeypatch.setenv("MAILGATE_SECRETS_KEY", KEY)
    assert _parse({"metrics": {"port": 9100}}).secrets.vault
    with pytest.raises(ConfigProblems, match=r"\[secrets\]\.vault: the links need the HTTP"):
        _parse({})
    monkeypatch.delenv("MAILGATE_SECRETS_KEY")
    with pytest.raises(ConfigProblems, match=r"\[secrets\]\.vault: needs \[secrets\]\.key"):
        _parse({"secrets": {"vault": True}, "metrics": {"port": 9100}})
    with pytest.raises(ConfigProblems, match=r"\[secrets\]\.key: must be 32 bytes in base64"):
        _parse({"secrets": {"key": "c2hvcnQ="}, "metrics": {"port": 9100}})


def test_references_are_numbered_across_subject_and_body(
    config: Config, store: Store, clock: Clock, server: int
) -> None:
    """A credential in the subject is ``[secret 1]``, the body's follow on; without the
    vault both stay masked for good (``••••••``) and nothing is stored."""
    from mailgate.pipeline.inputs import masked

    assert masked("Passwort: A1b2c3d4! und PIN 4471", vault=True, first=2) == (
        "Passwort: [secret 2] und PIN [secret 3]",
        ("A1b2c3d4!", "4471"),
    )
    assert masked("Passwort: A1b2c3d4!", vault=False)[0] == "Passwort: ••••••"
    subject = "Login anna / Xk9#mmQ2pL"
    assert send(server, mail(subject=subject, body="Passwort: Sommer2026!\n")) == {}
    with store.transaction() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.subject == "Login anna / [secret 1]"
        assert [c.body for c in ticket.comments] == ["Passwort: [secret 2]"]
        assert [r.number for r in s.scalars(select(Secret).order_by(Secret.id))] == [1, 2]
    Jobs(store, config).deliver_outbox(clock())
    [text] = [text for kind, _, text in sent_mail(store) if kind == "agent_new_ticket"]
    assert sorted(links(text)) == [1, 2] and "Xk9#mmQ2pL" not in text


def test_serve_reveals_through_its_own_listener(
    make_config: Callable[..., tuple[Config, Path]], tmp_path: Path
) -> None:
    """``mailgate serve`` with parser processes: the mail's secret is sealed by the writer,
    the link from ``jobs run`` opens on the daemon's listener, once."""
    import signal

    from .test_cli import Daemon

    _, path = make_config({**VAULT, "server": {"workers": "auto"}}, name="serve.toml")
    daemon = Daemon(path)
    try:
        port = int(daemon.wait_for(r"http://127\.0\.0\.1:(\d+)/metrics").group(1))
        assert send(daemon.port, mail(subject="Zugang", body=BODY)) == {}
        assert run_cli(path, "jobs", "run").returncode == 0
        texts = [readable(p.read_bytes()) for p in (tmp_path / "outbox").rglob("*") if p.is_file()]
        [agent_text] = [t for t in texts if "/secret/" in t]
        url = f"http://127.0.0.1:{port}/secret/{links(agent_text)[2]}"
        status, _, html = request(url)
        assert status == 200
        status, _, html = request(url, {"page_token": page_token(html)})
        assert status == 200 and VALUES[1] in html
        assert request(url)[0] == 410
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0


def test_two_clicks_at_once_reveal_once(
    config: Config, store: Store, clock: Clock, server: int
) -> None:
    """Two POSTs racing for one link: one shows the value, the other says used."""
    from concurrent.futures import ThreadPoolExecutor

    new_ticket_with_secrets(config, store, clock, server)
    [text] = [text for kind, _, text in sent_mail(store) if kind == "agent_new_ticket"]
    with http(config, store, clock) as listener:
        url = listener.url(links(text)[1])
        form = {"page_token": page_token(request(url)[2])}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: request(url, form), range(4)))
    assert sorted(status for status, _, _ in answers) == [200, 410, 410, 410]
    assert sum("geheim123" in html for _, _, html in answers) == 1
    with store.transaction() as s:
        notes = s.scalars(select(Comment).where(Comment.author_kind == "system")).all()
        assert len(notes) == 1


def test_without_the_vault_credentials_stay_masked_and_links_lead_nowhere(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    """The vault off (no key): masked for good, nothing stored, no link page."""
    from mailgate.app import ServerThread

    plain, _ = make_config({"metrics": {"port": 0}}, name="plain.toml")
    assert not plain.secrets.vault
    with open_store(plain, clock) as store:
        with ServerThread(plain, store, clock) as thread:
            assert thread.server.port is not None
            assert send(thread.server.port, mail(subject="Zugang", body=BODY)) == {}
        with store.transaction() as s:
            assert s.scalars(select(Secret)).all() == []
            [comment] = s.scalars(select(Comment)).all()
            assert "Das Passwort ist ••••••" in comment.body
        with http(plain, store, clock) as listener:
            status, headers, html = request(listener.url("A" * 43))
            assert status == 404 and "Unknown link" in html
            assert headers["Referrer-Policy"] == "no-referrer"
