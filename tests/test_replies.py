"""Replies through ingest and the SMTP listener: right ticket, no hijacks, agents' commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.db.queries import get_ticket, ticket_detail
from mailgate.db.records import update_ticket
from mailgate.ingest import InboundEnvelope, IngestResult, ingest
from mailgate.models import Meta, Outbox
from mailgate.pipeline.threads import reply_address
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, send

ANNA = "Anna Schmidt <anna@mueller-logistik.de>"
AGENT = "Tech Support <tech@support.example.com>"
OUTSIDER = "Mallory <mallory@evil.example>"


def run(store: Store, config: Config, clock: Clock, raw: bytes, *rcpt: str) -> IngestResult:
    clock.advance(minutes=1)
    return ingest(
        store, config, raw, InboundEnvelope(None, rcpt or ("support@support.example.com",)), clock()
    )


def detail(store: Store, ticket: int) -> dict[str, Any]:
    with store.transaction() as s:
        return ticket_detail(s, get_ticket(s, ticket))


def outbox(store: Store) -> list[tuple[str, int | None, list[str], dict[str, Any]]]:
    with store.transaction() as s:
        return [
            (o.kind, o.ticket_id, o.recipients, o.payload)
            for o in s.scalars(select(Outbox).order_by(Outbox.id))
        ]


def first_ticket(store: Store, config: Config, clock: Clock) -> int:
    created = run(
        store,
        config,
        clock,
        mail(
            subject="Drucker kaputt",
            message_id="<first@ml>",
            extra="Cc: Chef <chef@mueller-logistik.de>\r\n",
        ),
    )
    assert created.action == "created" and created.ticket is not None
    return created.ticket


def test_reply_by_in_reply_to_strips_quotes(store: Store, config: Config, clock: Clock) -> None:
    """A Gmail-shaped reply lands on its ticket with only the new text."""
    tid = first_ticket(store, config, clock)
    body = (
        "Geht wieder, danke!\n\nAm Do., 26. Nov. 2026 um 10:00 Uhr schrieb Anna Schmidt "
        "<anna@mueller-logistik.de>:\n> Hallo,\n> der Drucker druckt nicht.\n"
    )
    reply = mail(
        subject="Re: Drucker kaputt",
        body=body,
        extra="In-Reply-To: <first@ml>\r\nReferences: <first@ml>\r\n",
    )
    result = run(store, config, clock, reply)
    assert (result.action, result.ticket) == ("commented", tid)
    assert "In-Reply-To/References" in result.reason
    comments = detail(store, tid)["comments"]
    assert [c["body"] for c in comments][1] == "Geht wieder, danke!"
    assert ("customer_reply", tid, ["tech@support.example.com"]) in [o[:3] for o in outbox(store)]


def test_reply_by_tag_from_org_member_and_outlook_quote(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    body = (
        "Bitte auch den Scanner prüfen.\n\n-----Ursprüngliche Nachricht-----\nVon: Support "
        "<support@support.example.com>\nGesendet: Donnerstag, 26. November 2026 10:05\n"
        f"An: Anna\nBetreff: [#{tid}] Drucker kaputt\n\nAlter Text\n"
    )
    reply = mail(
        sender="Chef <chef@mueller-logistik.de>", subject=f"AW: [#{tid}] Drucker kaputt", body=body
    )
    result = run(store, config, clock, reply)
    assert (result.action, result.ticket) == ("commented", tid)
    assert detail(store, tid)["comments"][1]["body"] == "Bitte auch den Scanner prüfen."


def test_tag_from_a_stranger_is_a_new_ticket(store: Store, config: Config, clock: Clock) -> None:
    """Hijack protection: a guessed tag does not attach a stranger's mail."""
    tid = first_ticket(store, config, clock)
    hijack = run(store, config, clock, mail(sender=OUTSIDER, subject=f"Re: [#{tid}] Drucker"))
    assert hijack.action == "created" and hijack.ticket != tid
    assert f"tag [#{tid}] from unauthorised sender" in hijack.reason
    assert hijack.ticket is not None
    assert detail(store, hijack.ticket)["subject"] == "Re: Drucker"
    assert len(detail(store, tid)["comments"]) == 1


def test_forged_in_reply_to_from_outsider_does_not_attach(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    forged = mail(
        sender="Bob <bob@agentur.de>",
        subject="Re: Drucker kaputt",
        extra="In-Reply-To: <first@ml>\r\n",
    )
    result = run(store, config, clock, forged)
    assert result.action == "created" and result.ticket != tid
    assert f"references to ticket #{tid} from unauthorised sender" in result.reason
    assert result.organization == "Agentur Blau"  # the sender's own, not the referenced one


def test_reply_token_threads_for_anyone_and_cannot_be_forged(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    with store.transaction() as s:
        secret = s.get(Meta, "secret")
        assert secret is not None and len(secret.value) == 64
        token = reply_address(tid, config.mail.address, secret.value)
    by_token = run(
        store, config, clock, mail(sender="neu@mueller-logistik.de", subject="Antwort"), token
    )
    assert (by_token.action, by_token.ticket) == ("commented", tid)
    forged = token.replace(f"+{tid}-", f"+{tid + 1}-")
    assert run(store, config, clock, mail(sender=OUTSIDER, subject="x"), forged).action == "created"


def test_status_rules_and_follow_up_of_closed(store: Store, config: Config, clock: Clock) -> None:
    tid = first_ticket(store, config, clock)
    with store.transaction() as s:
        update_ticket(s, get_ticket(s, tid), clock(), status="solved")
    run(store, config, clock, mail(subject=f"Re: [#{tid}] Drucker", body="Doch nicht!"))
    reopened = detail(store, tid)
    assert (reopened["status"], reopened["solved_at"]) == ("open", None)

    with store.transaction() as s:
        update_ticket(s, get_ticket(s, tid), clock(), status="closed")
    follow = run(store, config, clock, mail(subject=f"Re: [#{tid}] Drucker", body="Wieder kaputt"))
    assert follow.action == "created" and follow.ticket != tid
    assert follow.ticket is not None
    new = detail(store, follow.ticket)
    assert (new["follow_up_of"], new["organization"], new["requester"], new["subject"]) == (
        tid,
        "Müller Logistik GmbH",
        "anna@mueller-logistik.de",
        "Drucker kaputt",
    )
    assert new["participants"] == ["chef@mueller-logistik.de"]
    assert detail(store, tid)["status"] == "closed"


def test_auto_replies_never_reopen_nor_open_tickets(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    with store.transaction() as s:
        update_ticket(s, get_ticket(s, tid), clock(), status="solved")
    ooo = mail(
        subject=f"Abwesenheitsnotiz: [#{tid}] Drucker",
        body="Bin im Urlaub.",
        extra="Auto-Submitted: auto-replied\r\n",
    )
    result = run(store, config, clock, ooo)
    assert (result.action, result.ticket) == ("commented", tid)
    after = detail(store, tid)
    assert after["status"] == "solved"
    assert after["comments"][-1]["public"] is False
    lone = run(
        store,
        config,
        clock,
        mail(sender=OUTSIDER, subject="Out of office", extra="Precedence: bulk\r\n"),
    )
    assert (lone.action, lone.ticket) == ("ignored", None)
    assert "auto-reply" in lone.reason


def test_agent_reply_with_commands(store: Store, config: Config, clock: Clock) -> None:
    """Agents work from their mail client: commands are applied and removed from the text."""
    tid = first_ticket(store, config, clock)
    body = "#status solved\n#org agentur blau\n\nIst erledigt, der Toner war leer.\n"
    result = run(
        store,
        config,
        clock,
        mail(sender=AGENT, extra=AUTHENTICATED, subject=f"Re: [#{tid}] Drucker kaputt", body=body),
    )
    assert (result.action, result.ticket) == ("commented", tid)
    after = detail(store, tid)
    assert (after["status"], after["organization"]) == ("solved", "Agentur Blau")
    assert after["solved_at"] is not None
    answer, moved = after["comments"][-2:]
    assert (answer["author"], answer["public"], answer["body"]) == (
        "tech@support.example.com",
        True,
        "Ist erledigt, der Toner war leer.",
    )
    assert moved["body"] == (
        "Moved from Müller Logistik GmbH to Agentur Blau by tech@support.example.com"
    )
    # The Cc'd chef is Müller's, not Agentur Blau's: the move left him behind (tests/test_moves.py).
    kinds = [(o[0], o[2]) for o in outbox(store)]
    assert ("agent_reply", ["anna@mueller-logistik.de"]) in kinds


def test_agent_bad_commands_change_nothing_and_are_explained(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    body = "#status erledigt\n#frobnicate now\n#org Gibtsnicht AG\n\nText\n"
    run(
        store,
        config,
        clock,
        mail(sender=AGENT, extra=AUTHENTICATED, subject=f"Re: [#{tid}] x", body=body),
    )
    after = detail(store, tid)
    assert (after["status"], after["organization"]) == ("open", "Müller Logistik GmbH")
    [error] = [o for o in outbox(store) if o[0] == "command_error"]
    assert error[2] == ["tech@support.example.com"]
    messages = error[3]["errors"]
    assert len(messages) == 3
    assert "status must be open, pending or solved" in messages[0]
    assert "unknown command" in messages[1]
    assert "no organization matches" in messages[2]


def test_private_note_reaches_nobody_and_customer_commands_are_text(
    store: Store, config: Config, clock: Clock
) -> None:
    tid = first_ticket(store, config, clock)
    run(
        store,
        config,
        clock,
        mail(sender=AGENT, extra=AUTHENTICATED, subject=f"[#{tid}] x", body="#note\nKunde ruft an"),
    )
    note = detail(store, tid)["comments"][-1]
    assert (note["public"], note["body"]) == (False, "Kunde ruft an")
    assert not [o for o in outbox(store) if o[0] == "agent_reply"]
    run(store, config, clock, mail(subject=f"[#{tid}] x", body="#status solved\nbitte"))
    after = detail(store, tid)
    assert after["status"] == "open"  # opened by the agent's note, not solved by the customer
    assert after["comments"][-1]["body"] == "#status solved\nbitte"


def test_new_ccs_only_from_requester_or_agent(store: Store, config: Config, clock: Clock) -> None:
    tid = first_ticket(store, config, clock)
    run(
        store,
        config,
        clock,
        mail(
            sender="Chef <chef@mueller-logistik.de>",
            subject=f"[#{tid}] x",
            extra="Cc: fremd@other.example\r\n",
        ),
    )
    assert "fremd@other.example" not in detail(store, tid)["participants"]
    run(store, config, clock, mail(subject=f"[#{tid}] x", extra="Cc: it@mueller-logistik.de\r\n"))
    assert "it@mueller-logistik.de" in detail(store, tid)["participants"]


def test_agent_forward_makes_the_customer_requester(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    config, _ = make_config()
    inline = (
        "Bitte kümmern.\n\n---------- Forwarded message ---------\n"
        "From: Anna Schmidt <anna@mueller-logistik.de>\nDate: Thu, 26 Nov 2026\n"
        "Subject: Drucker\n\nDer Drucker ist kaputt.\n"
    )
    fwd = run(
        store,
        config,
        clock,
        mail(sender=AGENT, extra=AUTHENTICATED, subject="Fwd: Drucker", body=inline),
    )
    assert fwd.action == "created" and fwd.ticket is not None
    ticket = detail(store, fwd.ticket)
    assert (ticket["requester"], ticket["organization"], ticket["subject"]) == (
        "anna@mueller-logistik.de",
        "Müller Logistik GmbH",
        "Drucker",
    )
    assert "forwarded by agent tech@support.example.com" in ticket["routing"]["reason"]

    attached = (
        b"From: Tech Support <tech@support.example.com>\r\nTo: support@support.example.com\r\n"
        + AUTHENTICATED.encode()
        + b"Subject: WG: Rechnung\r\nMessage-ID: <fwd2@support>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsiehe unten\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: Berater <berater@agentur.de>\r\nSubject: Rechnung\r\n\r\n"
        b"Rechnung fehlt\r\n--b--\r\n"
    )
    result = run(store, config, clock, attached)
    assert result.ticket is not None
    assert detail(store, result.ticket)["requester"] == "berater@agentur.de"


def test_reply_over_smtp_threads(server: int, store: Store) -> None:
    """Through the real listener: the first mail opens a ticket, the reply comments on it."""
    send(server, mail(subject="Server down", message_id="<smtp-first@ml>"))
    send(
        server,
        mail(
            subject="Re: Server down",
            body="Läuft wieder.\n\nOn Thu, Nov 26, 2026 at "
            "10:00 AM Anna <anna@mueller-logistik.de> wrote:\n> Server down\n",
            extra="In-Reply-To: <smtp-first@ml>\r\n",
        ),
    )
    ticket = detail(store, 1)
    assert [c["body"] for c in ticket["comments"]] == [
        "Hallo,\nder Drucker druckt nicht.",
        "Läuft wieder.",
    ]


CLIENT_REPLIES = {
    "thunderbird": "Danke, geht wieder.\n\nAm 26.11.26 um 10:00 schrieb Anna Schmidt:\n> Hallo,\n"
    "> der Drucker druckt nicht.\n",
    "apple-mail": "Danke, geht wieder.\n\nVon meinem iPhone gesendet\n\n> Am 26.11.2026 um 10:00 "
    "schrieb Support <support@support.example.com>:\n>\n> Hallo,\n",
    "outlook-en": "Danke, geht wieder.\n\nFrom: Support <support@support.example.com>\nSent: "
    "Thursday, November 26, 2026 10:05 AM\nTo: Anna Schmidt\nSubject: RE: Drucker\n\nAlt\n",
    "outlook-de-bold": "Danke, geht wieder.\n\n*Von:* Support <support@support.example.com>\n"
    "*Gesendet:* Donnerstag, 26. November 2026 10:05\n*An:* Anna\n*Betreff:* Drucker\n\nAlt\n",
    "signature": "Danke, geht wieder.\n\n-- \nAnna Schmidt\nMüller Logistik GmbH\n",
}


@pytest.mark.parametrize("client", sorted(CLIENT_REPLIES))
@pytest.mark.parametrize(
    "subject", ["AW: AW: WG: [#{id}] Drucker kaputt", "Re:Drucker kaputt [#{id}]", "[#{id}]"]
)
def test_client_shapes_and_mangled_subjects(
    client: str, subject: str, store: Store, config: Config, clock: Clock
) -> None:
    """Replies from the usual clients, with mangled subjects and no References, thread."""
    tid = first_ticket(store, config, clock)
    result = run(
        store, config, clock, mail(subject=subject.format(id=tid), body=CLIENT_REPLIES[client])
    )
    assert (result.action, result.ticket) == ("commented", tid)
    assert detail(store, tid)["comments"][-1]["body"] == "Danke, geht wieder."
