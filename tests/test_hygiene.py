"""Loops, floods, limits and the quarantine: calm and correct, nothing silently dropped."""

from __future__ import annotations

import json
import smtplib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailgate.app import ServerThread
from mailgate.config import Config
from mailgate.db.queries import get_ticket, ticket_detail
from mailgate.db.records import update_ticket
from mailgate.ingest import InboundEnvelope, ingest, reprocess_quarantined
from mailgate.jobs import Jobs
from mailgate.models import LedgerEntry, Outbox
from mailgate.store import Store

from .conftest import (
    CORPUS,
    CliResult,
    Clock,
    corpus_files,
    corpus_missing,
    mail,
    run_cli,
    without_agent_notices,
)


def test_own_notifications_coming_back_are_ignored(
    store: Store, config: Config, clock: Clock
) -> None:
    looped = mail(sender="Support <support@support.example.com>", subject="[#1] x")
    assert ingest(store, config, looped, InboundEnvelope(), clock()).action == "ignored"
    header = mail(sender="x@relay.example", extra="X-Mailgate-Loop: support.example.com\r\n")
    result = ingest(store, config, header, InboundEnvelope(), clock())
    assert (result.action, result.ticket) == ("ignored", None)
    assert "loop" in result.reason


def test_rate_limits_quarantine_then_reprocess_exactly_once(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """Past the acknowledgement cap tickets stay silent; past the ticket cap mail waits."""
    config, _ = make_config({"limits": {"acks_per_hour": 2, "tickets_per_hour": 3}})
    results = [
        ingest(
            store,
            config,
            mail(sender="flood@gmail.com", subject=f"n{i}"),
            InboundEnvelope(),
            clock(),
        )
        for i in range(5)
    ]
    assert [r.action for r in results] == ["created"] * 3 + ["quarantined"] * 2
    assert results[3].reason.startswith("rate_limited: 3 new tickets from flood@gmail.com")
    with store.transaction() as s:
        acks = [o for o in s.scalars(select(Outbox)) if o.kind == "ticket_created"]
    assert len(acks) == 2 and "no acknowledgement" in results[2].reason

    clock.advance(hours=2)  # the hour has passed: the admin reprocesses
    done = reprocess_quarantined(store, config, clock())
    assert [r.action for _, r in done] == ["created", "created"]
    assert reprocess_quarantined(store, config, clock()) == []  # exactly once


@pytest.fixture
def strict_server(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> Iterator[int]:
    config, _ = make_config({"limits": {"max_recipients": 2}})
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def test_too_many_recipients_get_452(strict_server: int) -> None:
    with smtplib.SMTP("127.0.0.1", strict_server) as client:
        client.ehlo()
        client.mail("a@mueller-logistik.de")
        assert client.rcpt("support+1@support.example.com")[0] == 250
        assert client.rcpt("support+2@support.example.com")[0] == 250
        code, reply = client.rcpt("support+3@support.example.com")
        assert code == 452 and reply.startswith(b"4.5.3")


def test_quarantine_commands_and_stats(config_path: Path) -> None:
    def cli(*args: str, stdin: bytes = b"") -> CliResult:
        return run_cli(config_path, *args, stdin=stdin)

    cli("ingest", stdin=b"")
    cli("ingest", stdin=b"Subject: ohne Absender\r\n\r\nText\r\n")
    cli("ingest", stdin=mail())
    listed = json.loads(cli("quarantine", "list", "--json").stdout)
    assert [q["reason"].split(":")[0] for q in listed] == [
        "unparseable",
        "no sender address (From)",
    ]
    shown = cli("quarantine", "show", str(listed[1]["id"])).stdout.decode()
    assert "no sender address" in shown and "ohne Absender" in shown
    raw = cli("quarantine", "show", str(listed[1]["id"]), "--raw").stdout
    assert raw == b"Subject: ohne Absender\r\n\r\nText\r\n"
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["ledger"] == {"created": 1, "quarantined": 2, "total": 3}
    assert stats["tickets"] == {"new": 1}
    again = cli("quarantine", "reprocess", "--all")
    assert again.returncode == 0
    assert [json.loads(line)["action"] for line in again.stdout.splitlines()] == [
        "quarantined",
        "quarantined",
    ]
    assert json.loads(cli("stats", "--json").stdout)["ledger"]["total"] == 3  # nothing doubled
    missing = cli("quarantine", "show", "999")
    assert missing.returncode == 1 and b"not in quarantine" in missing.stderr


def dsn(original: bytes, recipient: str, status: str) -> bytes:
    """A Postfix-style delivery status notification returning ``original``."""
    return (
        (
            "From: MAILER-DAEMON@mx.kunde.example (Mail Delivery System)\r\n"
            "To: support@support.example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <dsn-1@mx.kunde.example>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.kunde.example\r\n"
            f"\r\nFinal-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
            "--B\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + original
        + b"\r\n--B--\r\n"
    )


def test_bounce_marks_the_notification_and_suppresses_the_address(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """A bounce is no ticket: the delivery is marked bounced, noted, the address suppressed."""
    config, _ = make_config({"agents": {"notify": []}})  # the acknowledgement is the one mail
    created = ingest(store, config, mail(sender="weg@kunde.example"), InboundEnvelope(), clock())
    Jobs(store, config).deliver_outbox(clock())  # into the maildir
    with store.transaction() as s:
        [ack] = s.scalars(select(Outbox).where(Outbox.kind == "ticket_created")).all()
        original = ack.message
    assert original is not None
    bounce = ingest(
        store,
        config,
        dsn(original, "weg@kunde.example", "5.1.1"),
        InboundEnvelope("", ("support@support.example.com",)),
        clock(),
    )
    assert (bounce.action, bounce.ticket) == ("ignored", created.ticket)
    assert "weg@kunde.example 5.1.1" in bounce.reason
    with store.transaction() as s:
        assert s.scalars(select(Outbox)).one().status == "bounced"
        assert created.ticket is not None
        note = ticket_detail(s, get_ticket(s, created.ticket))["comments"][-1]
    assert note["public"] is False and "bounced" in note["body"]
    # further mail to the address is suppressed, but the ticket is still created
    again = ingest(
        store, config, mail(sender="weg@kunde.example", subject="neu"), InboundEnvelope(), clock()
    )
    assert again.action == "created"
    with store.transaction() as s:
        assert len(s.scalars(select(Outbox)).all()) == 1
    clock.advance(days=8)
    ingest(
        store,
        config,
        mail(sender="weg@kunde.example", subject="später"),
        InboundEnvelope(),
        clock(),
    )
    with store.transaction() as s:
        assert len(s.scalars(select(Outbox)).all()) == 2


def test_a_hard_bounced_requester_gets_no_closing_mail(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """Auto-close queues ``ticket_closed`` through the same rules as ingest: suppression too."""
    config, _ = make_config()
    jobs = Jobs(store, config)
    created = ingest(store, config, mail(sender="weg@kunde.example"), InboundEnvelope(), clock())
    kept = ingest(store, config, mail(sender="da@kunde.example"), InboundEnvelope(), clock())
    jobs.deliver_outbox(clock())
    with store.transaction() as s:
        ack = s.scalars(
            select(Outbox).where(
                Outbox.ticket_id == created.ticket, Outbox.kind == "ticket_created"
            )
        ).one()
        original = ack.message
    assert original is not None
    envelope = InboundEnvelope("", ("support@support.example.com",))
    ingest(store, config, dsn(original, "weg@kunde.example", "5.1.1"), envelope, clock())
    with store.transaction() as s:
        for result in (created, kept):
            assert result.ticket is not None
            update_ticket(s, get_ticket(s, result.ticket), clock(), status="solved")
    closed = jobs.close_solved(clock() + timedelta(days=3, minutes=1))
    assert closed == sorted([created.ticket, kept.ticket])
    with store.transaction() as s:
        told = [o.recipients for o in s.scalars(select(Outbox)) if o.kind == "ticket_closed"]
    assert told == [["da@kunde.example"]]


def test_credentials_are_masked_everywhere_but_the_raw_mail(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """A pasted password stays in the raw mail only; the sender is pointed to the link."""
    config, _ = make_config({"mail": {"secrets_url": "https://secrets.example.com/new"}})
    body = "Hallo,\nder Zugang klemmt.\nBenutzer: anna\nPasswort: Geheim123!\n"
    created = ingest(
        store, config, mail(subject="Login kaputt", body=body), InboundEnvelope(), clock()
    )
    assert created.ticket is not None
    with store.transaction() as s:
        comment = ticket_detail(s, get_ticket(s, created.ticket))["comments"][0]
        raw = s.scalars(select(LedgerEntry)).one().raw
        kinds = [o.kind for o in s.scalars(select(Outbox))]
    assert "Geheim123" not in comment["body"] and "Passwort: ••••••" in comment["body"]
    assert b"Geheim123!" in raw
    assert kinds == ["ticket_created", "new_ticket_follower", "agent_new_ticket", "secret_warning"]
    Jobs(store, config).deliver_outbox(clock())
    with store.transaction() as s:
        sent = [o.message for o in s.scalars(select(Outbox))]
    assert all(m is not None and b"Geheim123" not in m for m in sent)
    assert any(m is not None and b"https://secrets.example.com/new" in m for m in sent)


def test_own_notification_fed_back_never_causes_more_mail(
    store: Store, config: Config, clock: Clock
) -> None:
    """Our acknowledgement returned verbatim, as an auto-reply, or inside a bounce: no mail."""
    config = without_agent_notices(config)  # the acknowledgement is the one mail
    ingest(store, config, mail(sender="kunde@kunde.example"), InboundEnvelope(), clock())
    jobs = Jobs(store, config)
    jobs.deliver_outbox(clock())
    with store.transaction() as s:
        [ack] = s.scalars(select(Outbox).where(Outbox.kind == "ticket_created")).all()
        sent = ack.message
    assert sent is not None
    auto = sent.replace(
        b"Subject: ", b"Auto-Submitted: auto-replied\r\nSubject: Automatic reply: ", 1
    )
    for variant in (sent, auto, dsn(sent, "kunde@kunde.example", "5.2.2")):
        result = ingest(
            store, config, variant, InboundEnvelope("", ("support@support.example.com",)), clock()
        )
        assert result.action in ("ignored", "duplicate"), result
    with store.transaction() as s:
        assert len(s.scalars(select(Outbox)).all()) == 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_mail_never_raises_and_the_ledger_balances(
    data: st.DataObject, store: Store, config: Config, clock: Clock
) -> None:
    """Arbitrary bytes and mutated real mail: every call ends in the ledger or as duplicate."""
    base = mail(subject=data.draw(st.text(max_size=40)), body=data.draw(st.text(max_size=200)))
    cut = data.draw(st.integers(0, len(base)))
    noise = data.draw(st.binary(max_size=200))
    raw = data.draw(st.sampled_from([noise, base[:cut] + noise + base[cut:], base[:cut], base]))
    with store.transaction() as s:
        before = len(s.scalars(select(LedgerEntry.id)).all())
    result = ingest(store, config, raw, InboundEnvelope(), clock())
    with store.transaction() as s:
        after = len(s.scalars(select(LedgerEntry.id)).all())
    assert result.action in ("created", "commented", "ignored", "quarantined", "duplicate")
    assert after == before + (0 if result.action == "duplicate" else 1)


def test_sisimai_corpus_from_a_null_sender_is_never_acknowledged(
    store: Store, config: Config, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every sisimai message sent with ``MAIL FROM:<>`` (bounces, reports, auto-replies):
    no acknowledgement at all (RFC 3834 §2), and the reports are recorded as reports."""
    files = [path for path, _ in corpus_files() if path.startswith("sisimai")]
    if not files:
        pytest.skip(corpus_missing())
    envelope = InboundEnvelope("", ("support@support.example.com",))
    actions: Counter[str] = Counter()
    reports = 0
    for path in files:
        result = ingest(store, config, (CORPUS / path).read_bytes(), envelope, clock())
        actions[result.action] += 1
        reports += result.action == "ignored" and result.reason.startswith("report (")
    with store.transaction() as s:
        acks = [o.recipients for o in s.scalars(select(Outbox)) if o.kind == "ticket_created"]
    with capsys.disabled():
        print(
            f"\nsisimai, null sender: {len(files)} mails, {dict(actions)}, "
            f"acknowledgements {len(acks)}, reports ignored {reports}"
        )
    assert acks == []
    assert reports > 0
