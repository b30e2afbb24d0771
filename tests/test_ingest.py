"""Ingest on both backends: hostile input, idempotency, and the real-world corpus."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from mailgate.config import Config
from mailgate.db.queries import get_ticket, ticket_detail
from mailgate.db.records import raw_mail
from mailgate.ingest import InboundEnvelope, IngestResult, ingest, ingest_batch, prepare
from mailgate.models import Attachment, Blob, LedgerEntry, Outcome, Ticket
from mailgate.routing import Router
from mailgate.store import Store

from .conftest import AUTHENTICATED, BASE_CONFIG, CORPUS, Clock, corpus_files, corpus_missing, mail

LEDGER = {o.value for o in Outcome}


def _ledger(store: Store) -> Counter[str]:
    with store.transaction() as s:
        return Counter(
            dict(
                s.execute(
                    select(LedgerEntry.outcome, func.count()).group_by(LedgerEntry.outcome)
                ).all()
            )
        )


GARBAGE = {
    "empty": b"",
    "whitespace": b" \r\n\r\n",
    "binary": bytes(range(256)) * 40,
    "truncated-mime": (
        b"From: a@b.example\r\nSubject: cut\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n--XX\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK"
    ),
    "10k-header-lines": b"From: a@b.example\r\nSubject: many\r\n"
    + b"".join(b"X-Junk-%d: %s\r\n" % (i, b"v" * 40) for i in range(10_000))
    + b"\r\nbody\r\n",
    "no-from": b"Subject: wer bin ich\r\nMessage-ID: <nofrom@x>\r\n\r\nText\r\n",
    "nul-bytes": b"From: a@b.example\r\nSubject: nul\x00here\r\n\r\nbody\x00with nul\r\n",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_gets_a_clear_outcome(
    name: str, store: Store, config: Config, clock: Clock
) -> None:
    """Hostile or broken input ends in the ledger with an outcome; nothing raises."""
    raw = GARBAGE[name]
    result = ingest(store, config, raw, InboundEnvelope(), clock())
    assert result.action in LEDGER
    assert result.reason
    with store.transaction() as s:
        row = s.scalars(select(LedgerEntry)).one()
        assert row.raw == raw  # the original is always kept, byte for byte
        assert row.outcome == result.action
    if name in ("empty", "whitespace", "binary"):
        assert result.action == "quarantined" and result.reason.startswith("unparseable")
    if name == "no-from":
        assert result.action == "quarantined" and "sender" in result.reason


def test_attachments_are_stored_once_by_sha256(store: Store, config: Config, clock: Clock) -> None:
    """The same file in two mails is one blob; each comment lists it."""

    def with_pdf(mid: str) -> bytes:
        return (
            f"From: anna@mueller-logistik.de\r\nSubject: PDF\r\nMessage-ID: <{mid}>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nsiehe Anhang\r\n"
            '--b\r\nContent-Type: application/pdf; name="rechnung.pdf"\r\n'
            'Content-Disposition: attachment; filename="rechnung.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--b--\r\n"
        ).encode()

    first = ingest(store, config, with_pdf("p1@x"), InboundEnvelope(), clock())
    ingest(store, config, with_pdf("p2@x"), InboundEnvelope(), clock())
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Blob)) == 1
        assert s.scalar(select(func.count()).select_from(Attachment)) == 2
        assert first.ticket is not None
        [comment] = ticket_detail(s, get_ticket(s, first.ticket))["comments"]
    [attachment] = comment["attachments"]
    assert attachment["filename"] == "rechnung.pdf"
    assert attachment["content_type"] == "application/pdf"
    assert attachment["size"] == len(b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n")
    assert comment["body"] == "siehe Anhang"


def test_routing_fallbacks(store: Store, config: Config, clock: Clock) -> None:
    """Sole membership, first of several, sender's domain, else no organization."""
    cases = {
        "anna@mueller-logistik.de": "Müller Logistik GmbH",  # sole membership
        "berater@agentur.de": "Müller Logistik GmbH",  # two memberships: first in config
        "neu@agentur.de": "Agentur Blau",  # unknown user, organization's domain
        "fremd@gmail.com": None,
    }
    for sender, expected in cases.items():
        result = ingest(store, config, mail(sender=sender), InboundEnvelope(), clock())
        assert (sender, result.organization) == (sender, expected)


def test_same_message_id_twice_is_duplicate(store: Store, config: Config, clock: Clock) -> None:
    raw = mail(message_id="<once@x>")
    assert ingest(store, config, raw, InboundEnvelope(), clock()).action == "created"
    clock.advance(hours=1)
    again = ingest(store, config, raw, InboundEnvelope(), clock())
    assert again.action == "duplicate"
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1


def test_redelivery_with_other_line_endings_and_trace_headers_is_duplicate(
    store: Store, config: Config, clock: Clock
) -> None:
    """The same mail via another relay (new Received, LF endings) is still a duplicate."""
    raw = mail(message_id="<path@x>")
    assert ingest(store, config, raw, InboundEnvelope(), clock()).action == "created"
    relayed = b"Received: from mx2.example by mx.test; Thu, 26 Nov 2026 10:01:00 +0000\r\n" + raw
    assert ingest(
        store, config, relayed.replace(b"\r\n", b"\n"), InboundEnvelope(), clock()
    ).action == ("duplicate")


def test_reused_message_id_with_other_content_is_not_dropped(
    store: Store, config: Config, clock: Clock
) -> None:
    """Some mailers give every mail the same Message-ID; each mail still becomes a ticket."""
    first = ingest(
        store,
        config,
        mail(subject="Scan 1", message_id="<scan@printer>"),
        InboundEnvelope(),
        clock(),
    )
    second = ingest(
        store,
        config,
        mail(subject="Scan 2", message_id="<scan@printer>"),
        InboundEnvelope(),
        clock(),
    )
    assert (first.action, second.action) == ("created", "created")
    assert first.ticket != second.ticket
    assert first.message_id == second.message_id == "scan@printer"


def test_missing_message_id_is_synthesised_stably(
    store: Store, config: Config, clock: Clock
) -> None:
    raw = b"From: anna@mueller-logistik.de\r\nSubject: ohne ID\r\n\r\nText\r\n"
    first = ingest(store, config, raw, InboundEnvelope(), clock())
    assert first.action == "created" and first.message_id.endswith("@mailgate.invalid")
    assert ingest(store, config, raw, InboundEnvelope(), clock()).action == "duplicate"


@pytest.mark.skipif(not corpus_files(), reason=corpus_missing(CORPUS / "index.tsv"))
def test_real_world_corpus_ends_in_the_ledger(store: Store, config: Config, clock: Clock) -> None:
    """Every corpus message goes through ingest without an exception and ends in the ledger."""
    results: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for path, _category in corpus_files():
        raw = (CORPUS / path).read_bytes()
        result = ingest(
            store, config, raw, InboundEnvelope("", ("support@support.example.com",)), clock()
        )
        results[result.action] += 1
        if result.action == "quarantined":
            reasons[result.reason.split(":")[0]] += 1
        if result.action == "ignored":
            assert result.reason.startswith(("auto-reply", "bounce", "own mail", "report")), (
                path,
                result,
            )
        if result.action == "duplicate":  # byte variants (CRLF/CR copies) of a stored mail
            with store.transaction() as s:
                assert s.scalar(
                    select(LedgerEntry.id).where(LedgerEntry.message_id == result.message_id)
                )
        else:
            assert result.action in LEDGER, (path, result)
    ledger = _ledger(store)
    total = sum(results.values())
    print(f"\ncorpus: {total} messages -> {dict(results)}; quarantine reasons {dict(reasons)}")
    assert total == len(corpus_files())
    assert sum(ledger.values()) == total - results["duplicate"]
    # Quarantine only for input that is no mail (reply-parser body samples, raw TNEF and
    # .msg files, MIME part fragments) or has no sender at all; never for a bug.
    assert set(reasons) <= {"unparseable", "no sender address (From)"}, reasons
    # Robots' mail is ignored (never a ticket): the ~800 bounces, out-of-office, list mail.
    assert results["created"] + results["commented"] >= 300
    assert results["ignored"] >= 650
    assert reasons["no sender address (From)"] <= 50


def test_routing_rule_and_named_customer_reach_the_ticket(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """The stored ticket carries the router's organization, stripped subject, reason, tags."""
    config, _ = make_config(
        {
            "routing": {
                "rules": [
                    {
                        "from": "*@monitoring.example",
                        "organization": "Agentur Blau",
                        "priority": "urgent",
                        "tags": ["monitoring"],
                    }
                ]
            }
        }
    )
    alarm = ingest(
        store,
        config,
        mail(sender="nagios@monitoring.example", subject="DOWN"),
        InboundEnvelope(),
        clock(),
    )
    named = ingest(
        store,
        config,
        mail(sender="berater@agentur.de", subject="AW: Müller Logistik: Drucker kaputt"),
        InboundEnvelope(),
        clock(),
    )
    with store.transaction() as s:
        assert alarm.ticket is not None and named.ticket is not None
        rule = ticket_detail(s, get_ticket(s, alarm.ticket))
        prefix = ticket_detail(s, get_ticket(s, named.ticket))
    assert (rule["organization"], rule["priority"], rule["tags"]) == (
        "Agentur Blau",
        "urgent",
        ["monitoring"],
    )
    assert rule["routing"]["reason"] == "routing rule 1"
    assert (prefix["organization"], prefix["subject"]) == ("Müller Logistik GmbH", "Drucker kaputt")
    assert prefix["routing"]["score"] == 100.0
    assert "sender is a member" in prefix["routing"]["reason"]


def _dedup_key_whole(message_id: str, raw: bytes) -> str:
    """The key as first defined, on the whole text at once (stored keys were made so)."""
    import hashlib

    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        body = b""
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line.strip())
    digest = hashlib.sha256(message_id.encode("utf-8", "replace"))
    for field in sorted(fields):
        name, _, value = field.partition(b":")
        if name.strip().lower() in (b"from", b"to", b"cc", b"subject", b"date", b"message-id"):
            digest.update(b"\0" + name.strip().lower() + b":" + b" ".join(value.split()))
    digest.update(b"\0" + body.rstrip())
    return digest.hexdigest()


_RAW_PIECES = st.lists(
    st.sampled_from(
        [b"\r", b"\n", b"\r\n", b" ", b"\t", b"From: a@b", b"Subject: x", b"body", b":", b"y"]
    ),
    max_size=40,
).map(b"".join)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=_RAW_PIECES, piece=st.one_of(st.integers(1, 7), st.just(1 << 20)))
def test_dedup_key_read_in_pieces_equals_the_whole_text_key(
    raw: bytes, piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a large mail in pieces must not change any key already stored."""
    import mailgate.pipeline.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "_PIECE", piece)
    assert prepare_module.dedup_key("<m@x>", raw) == _dedup_key_whole("<m@x>", raw)


def test_large_mail_is_stored_byte_for_byte(store: Store, config: Config, clock: Clock) -> None:
    """A mail with a 3 MB attachment: raw mail and attachment come back exactly as sent.

    On SQLite both are written in pieces (incremental BLOB I/O), the parser decodes the
    attachment aside; the result must not differ by a byte.
    """
    import base64
    import os

    payload = os.urandom(3 * 1024 * 1024)
    raw = (
        b"From: Anna <anna@mueller-logistik.de>\r\nTo: support@support.example.com\r\n"
        b"Subject: Logs\r\nMessage-ID: <large@mueller-logistik.de>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\nAnbei die Logs.\r\n--b1\r\n"
        b"Content-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="logs.gz"\r\n\r\n'
        + base64.encodebytes(payload).replace(b"\n", b"\r\n")
        + b"--b1--\r\n"
    )
    result = ingest(store, config, raw, InboundEnvelope("anna@mueller-logistik.de"), clock())
    assert result.action == "created"
    with store.transaction() as s:
        assert raw_mail(s, s.scalars(select(LedgerEntry)).one()) == raw
        attachment = s.scalars(select(Attachment)).one()
        assert (attachment.filename, attachment.size) == ("logs.gz", len(payload))
        assert s.get(Blob, attachment.sha256).data == payload
        assert ticket_detail(s, get_ticket(s, result.ticket))["comments"][0]["body"].startswith(
            "Anbei die Logs."
        )


def _conversation() -> list[Callable[[dict[str, int]], bytes]]:
    """Mails of every kind the parser process plans ahead, each made once the tickets before
    it are known (replies name them by tag)."""
    agent = "Tech Support <tech@support.example.com>"
    forwarded = (
        "Bitte kümmern.\n\n---------- Forwarded message ---------\n"
        "From: Anna Schmidt <anna@mueller-logistik.de>\nDate: Thu, 26 Nov 2026\n"
        "Subject: Drucker\n\nDer Drucker ist kaputt.\n"
    )
    return [
        lambda t: mail(subject="Müller Logistik: VPN", body="Zugang: Passwort: geheim123!\n"),
        lambda t: mail(
            subject=f"Re: [#{t['vpn']}] VPN",
            body="Passwort: neu456789!\n\nAm Montag schrieb Support:\n> alt\n> älter\n",
        ),
        lambda t: mail(
            sender=agent,
            subject=f"Re: [#{t['vpn']}] VPN",
            body="#status solved\n\nErledigt.\n",
            extra=AUTHENTICATED,
        ),
        lambda t: mail(sender=agent, subject="Fwd: Drucker", body=forwarded, extra=AUTHENTICATED),
        lambda t: mail(sender="fremd@other.example", subject="Agentur Blau: Angebot"),
        lambda t: mail(subject="Urlaub", extra="Auto-Submitted: auto-replied\r\n"),
        lambda t: mail(subject=f"Re: [#{t['vpn']}] VPN", extra="Auto-Submitted: auto-replied\r\n"),
    ]


def _store_conversation(store: Store, router: Router, now: datetime, ahead: bool) -> list[Any]:
    tickets: dict[str, int] = {}
    seen = []
    for make in _conversation():
        raw, envelope = make(tickets), InboundEnvelope("", ("support@support.example.com",))
        if ahead:
            prepared = prepare(router.config, raw, envelope, now, router=router)
            assert prepared.hints is not None
            assert prepared.hints.plan is not None or prepared.hints.reply is not None
            [(result, _)] = ingest_batch(store, router, [prepared])
        else:
            [(result, _)] = ingest_batch(store, router, [(raw, envelope, now)])
        assert isinstance(result, IngestResult)
        tickets.setdefault("vpn", result.ticket or 0)
        seen.append((result.action, result.ticket, result.organization, result.reason))
    with store.transaction() as s:
        for number in sorted({t for _, t, _, _ in seen if t is not None}):
            detail = ticket_detail(s, get_ticket(s, number))
            seen.append(
                (
                    detail["subject"],
                    detail["status"],
                    detail["requester"],
                    detail["organization"],
                    [(c["body"], c["public"]) for c in detail["comments"]],
                )
            )
    return seen


def test_work_done_ahead_gives_what_the_store_would_do_itself(
    store: Store, config: Config, clock: Clock, tmp_path: Path
) -> None:
    """Routing, quote stripping and masking done in the parser change no ticket."""
    plain = Store(f"sqlite:///{tmp_path / 'plain.db'}")
    plain.migrate()
    plain.sync(config, clock())
    router = Router(config)
    try:
        with_ahead = _store_conversation(store, router, clock(), ahead=True)
        without = _store_conversation(plain, router, clock(), ahead=False)
    finally:
        plain.close()
    assert with_ahead == without
    text = repr(with_ahead)
    assert "geheim123" not in text and "neu456789" not in text  # masked
    assert "> alt" not in text  # stripped
    assert ("solved", "anna@mueller-logistik.de") in [(d[1], d[2]) for d in with_ahead[7:]]


def test_work_done_ahead_with_another_config_is_done_again(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """A reload between parsing and storing: the store routes with its own config."""
    old, _ = make_config()
    orgs = [*BASE_CONFIG["organizations"], {"name": "Neu AG", "members": ["anna@neu.example"]}]
    new, _ = make_config({"organizations": orgs})
    store.sync(new, clock())
    raw = mail(sender="anna@neu.example", subject="Neu AG: Server down")
    prepared = prepare(old, raw, InboundEnvelope(), clock(), router=Router(old))
    assert prepared.hints is not None and prepared.hints.plan is not None
    assert prepared.hints.plan.decision.organization is None  # no such org in the old one
    [(result, _)] = ingest_batch(store, Router(new), [prepared])
    assert isinstance(result, IngestResult) and result.organization == "Neu AG"


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "group-commit"])
def test_every_outcome_keeps_the_raw_mail_byte_for_byte(
    grouped: bool, store: Store, config: Config, clock: Clock
) -> None:
    """The raw mail is written with the outcome, once: whatever the mail became, its ledger
    row holds it exactly (new ticket, reply, auto-reply, bounce, big mail, duplicate)."""
    first = mail(subject="Drucker kaputt", body="Hallo,\n" + "der Drucker druckt nicht.\n" * 400)
    created = ingest(store, config, first, InboundEnvelope(), clock())
    assert created.action == "created" and created.ticket is not None
    reply = mail(subject=f"Re: [#{created.ticket}] Drucker kaputt", body="Geht wieder.\n")
    auto = mail(subject="Abwesend", extra="Auto-Submitted: auto-replied\r\n")
    bounce = (
        b"From: MAILER-DAEMON@mx.kunde.example\r\nTo: support@support.example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-raw@mx.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.kunde.example\r\n\r\n"
        b"Final-Recipient: rfc822; weg@kunde.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"--B--\r\n"
    )
    big = mail(subject="Logs", body="x" * 80 + "\n" + "Zeile mit Inhalt\n" * 20_000)
    raws = [reply, auto, bounce, big, first]
    envelope = InboundEnvelope("anna@mueller-logistik.de", ("support@support.example.com",))
    if grouped:
        router = Router(config)
        outcomes = [
            r for r, _ in ingest_batch(store, router, [(r, envelope, clock()) for r in raws])
        ]
    else:
        outcomes = [ingest(store, config, r, envelope, clock()) for r in raws]
    assert [o.action for o in outcomes if isinstance(o, IngestResult)] == [
        "commented",
        "ignored",
        "ignored",
        "created",
        "duplicate",
    ]
    with store.transaction() as s:
        rows = s.scalars(select(LedgerEntry).order_by(LedgerEntry.id)).all()
        assert [raw_mail(s, row) for row in rows] == [first, reply, auto, bounce, big]
        assert [row.size for row in rows] == [len(r) for r in (first, reply, auto, bounce, big)]
