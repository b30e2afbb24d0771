"""Threading decisions, reply tokens and agent commands as pure functions."""

from __future__ import annotations

import pytest

from mailgate.pipeline.commands import split_commands
from mailgate.pipeline.facts import Reference, TicketFacts
from mailgate.pipeline.threads import (
    DEFAULT_TAG,
    NO_REFERENCE,
    match_thread,
    names_a_ticket,
    reply_address,
    status_after_reply,
    ticket_from_tag,
    ticket_from_token,
)

SECRET = "s3cr3t-s3cr3t-s3cr3t"
AGENTS = frozenset({"tech@support.example.com"})
T1 = TicketFacts(
    1,
    "open",
    "Kunde A",
    "anna@a.example",
    participants=("cc@a.example",),
    members=frozenset({"anna@a.example", "kollege@a.example"}),
)
T2 = TicketFacts(2, "open", "Kunde B", "bob@b.example", members=frozenset({"bob@b.example"}))


def test_reply_token_round_trip_and_forgery() -> None:
    address = reply_address(42, "support@support.example.com", SECRET)
    assert address.startswith("support+42-") and address.endswith("@support.example.com")
    assert ticket_from_token(["other@x.example", address.upper()], SECRET) == 42
    forged = address.replace("+42-", "+43-")
    assert ticket_from_token([forged], SECRET) is None
    assert ticket_from_token([address], "another-secret-entirely") is None
    assert ticket_from_token(["support@support.example.com"], SECRET) is None


@pytest.mark.parametrize(
    ("subject", "ticket"),
    [("Re: [#12] Drucker", 12), ("[#7]", 7), ("Drucker #12", None), ("[#] x", None)],
)
def test_tag(subject: str, ticket: int | None) -> None:
    assert ticket_from_tag(subject) == ticket


@pytest.mark.parametrize(
    ("sender", "token", "refs", "tag", "expected", "via"),
    [
        # the token is unforgeable: it wins for anyone
        ("stranger@x.example", T1, [], None, 1, "token"),
        # references: known senders, or a notification we sent to this very sender
        ("kollege@a.example", None, [Reference(T1, False)], None, 1, "references"),
        ("cc@a.example", None, [Reference(T1, False)], None, 1, "references"),
        ("new@x.example", None, [Reference(T1, True)], None, 1, "references"),
        ("tech@support.example.com", None, [Reference(T2, False)], None, 2, "references"),
        # a forged In-Reply-To from an outsider does not attach, and falls through to the tag
        ("bob@b.example", None, [Reference(T1, False)], None, None, "new"),
        ("bob@b.example", None, [Reference(T1, False)], T2, 2, "tag"),
        # tags only for senders the ticket knows (hijack protection)
        ("anna@a.example", None, [], T1, 1, "tag"),
        ("bob@b.example", None, [], T1, None, "new"),
        ("stranger@x.example", None, [], None, None, "new"),
    ],
)
def test_match_thread(
    sender: str,
    token: TicketFacts | None,
    refs: list[Reference],
    tag: TicketFacts | None,
    expected: int | None,
    via: str,
) -> None:
    match = match_thread(sender, AGENTS, token, refs, tag)
    assert (match.ticket.id if match.ticket else None, match.via) == (expected, via)


def test_refusals_say_why() -> None:
    assert match_thread("bob@b.example", AGENTS, None, [], T1).reason == (
        "tag [#1] from unauthorised sender"
    )
    refused = match_thread("bob@b.example", AGENTS, None, [Reference(T1, False)], None)
    assert refused.reason == "references to ticket #1 from unauthorised sender"
    assert match_thread("x@y.example", AGENTS, None, [], None).reason == NO_REFERENCE


@pytest.mark.parametrize(
    ("status", "by_agent", "auto", "after"),
    [
        ("pending", False, False, "open"),
        ("solved", False, False, "open"),
        ("new", False, False, "new"),
        ("open", False, False, "open"),
        ("solved", False, True, "solved"),  # robots never reopen
        ("pending", True, False, "pending"),
        ("new", True, False, "open"),
    ],
)
def test_status_after_reply(status: str, by_agent: bool, auto: bool, after: str) -> None:
    assert status_after_reply(status, by_agent, auto) == after


def test_commands_only_at_the_top() -> None:
    commands, body = split_commands("#status solved\n\n#org Kunde A\nDanke, erledigt.\n#tag x")
    assert [(c.name, c.argument) for c in commands] == [("status", "solved"), ("org", "Kunde A")]
    assert body == "Danke, erledigt.\n#tag x"
    assert split_commands("Hallo\n#status solved") == ((), "Hallo\n#status solved")
    commands, body = split_commands("#note\nintern")
    assert [c.name for c in commands] == ["note"] and body == "intern"


def test_a_mail_names_a_ticket_by_token_reference_or_tag_only() -> None:
    """What decides whether the parser plans a new ticket ahead or strips a reply."""
    support = "support@support.example.com"
    token = reply_address(42, support, "s3cret")
    assert names_a_ticket([support, token.upper()], [], "Hallo", DEFAULT_TAG)
    assert names_a_ticket([support], ["<a@b>"], "Hallo", DEFAULT_TAG)
    assert names_a_ticket([support], [], "Re: [#42] Hallo", DEFAULT_TAG)
    assert not names_a_ticket([support, "anna@x.example"], [], "Müller: #42 Hallo", DEFAULT_TAG)
