"""The filters, as tables: robots are recognised, people are not; our own addresses are
ours, agents' and customers' are not."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailgate.config import parse_config
from mailgate.models import LedgerEntry, Outbox, Ticket
from mailgate.parser import parse
from mailgate.pipeline.filters import auto_reply_reason, our_own_address
from mailgate.store import Store

from .conftest import mail, send


@pytest.mark.parametrize(
    ("headers", "robot"),
    [
        ("Auto-Submitted: auto-replied\r\n", True),
        ("Auto-Submitted: auto-generated\r\n", True),
        ("Auto-Submitted: auto-replied (zimbra; vacation)\r\n", True),
        ("Auto-Submitted: no\r\n", False),
        ("Precedence: bulk\r\n", True),
        ("Precedence: list\r\n", True),
        ("Precedence: first-class\r\n", False),
        ("X-Autoreply: yes\r\n", True),
        ("X-Autorespond: yes\r\n", True),
        ("X-Auto-Response-Suppress: All\r\n", True),
        ("List-Id: <kunden.lists.example>\r\n", True),
        ("List-Unsubscribe: <mailto:u@x.example>\r\n", True),
        ("Subject: Automatische Antwort: Drucker\r\n", True),
        ("Subject: Abwesenheitsnotiz: Drucker\r\n", True),
        ("Subject: Out of Office: Drucker\r\n", True),
        ("Subject: Automatic reply: Drucker\r\n", True),
        ("Subject: Drucker kaputt\r\n", False),
        ("Subject: Frage zur automatischen Antwort\r\n", False),
        ("", False),
    ],
)
def test_auto_reply_reason(headers: str, robot: bool) -> None:
    if "Subject:" not in headers:
        headers += "Subject: Re: Drucker\r\n"
    raw = f"From: a@b.example\r\n{headers}\r\nText\r\n".encode()
    reason = auto_reply_reason(parse(raw))
    assert (reason is not None) == robot, reason


_OUR_DOMAINS = parse_config(
    {
        "mail": {
            "domains": ["support.example.com", "kunden-support.example"],
            "address": "support@support.example.com",
            "recipients": ["support"],  # the agent's mailbox in our domain is not ours
        },
        "agents": {"addresses": ["tech@support.example.com"]},
    }
)


@pytest.mark.parametrize(
    ("email", "ours"),
    [
        ("support@support.example.com", "our address"),
        ("Support@Support.Example.COM", "our address"),
        ("support+1-abc@support.example.com", "our plus-address"),
        ("support+anything@support.example.com", "our plus-address"),
        ("postmaster@support.example.com", "our postmaster"),
        ("MAILER-DAEMON@support.example.com", "our mailer-daemon"),
        ("postmaster@kunden-support.example", "our postmaster"),
        ("mailer-daemon@kunden-support.example", "our mailer-daemon"),
        ("tech@support.example.com", None),  # an agent: agents write to us
        ("supporter@support.example.com", None),
        ("support-team+1@support.example.com", None),
        ("support+1-abc@kunde.example", None),
        ("postmaster@kunde.example", None),
        ("postmaster@mx.support.example.com", None),
        ("mailer-daemon+x@support.example.com", None),
    ],
)
def test_our_own_addresses(email: str, ours: str | None) -> None:
    assert our_own_address(email, _OUR_DOMAINS) == ours


def test_mail_from_our_plus_address_over_smtp_is_a_loop(server: int, store: Store) -> None:
    """Our own reply-token address as sender: no ticket, nothing to send, a loop in the ledger."""
    raw = mail(sender="Support <support+1-abc@support.example.com>", subject="Re: [#1] Drucker")
    send(server, raw, mail_from="support+1-abc@support.example.com")
    with store.transaction() as s:
        [entry] = s.scalars(select(LedgerEntry)).all()
        assert (entry.outcome, entry.reason) == (
            "ignored",
            "own mail (From is our plus-address), a loop",
        )
        assert s.scalars(select(Ticket)).all() == []
        assert s.scalars(select(Outbox)).all() == []
