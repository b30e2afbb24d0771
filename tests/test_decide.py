"""The decision for a mail, as a table: parsed mail and hand-made facts in, a Decision out.

No database and no socket: each row is a mail as a customer, an agent or a robot writes it,
the facts the store would have gathered, and what mailgate must make of it — the kind of
decision, the reason the ledger shows and who is told. Every reason the ledger can show
for a stored mail appears in some row (``processing failed`` is the store's, when a stage
raises; it is tested in tests/test_hygiene.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from mailgate.config import Config, parse_config
from mailgate.dkim_check import DkimResult
from mailgate.parser import UnparseableMessage, parse
from mailgate.pipeline.commands import FIRST_ANSWER, Change, command_address
from mailgate.pipeline.decide import STAGES, UNAUTHENTICATED, decide
from mailgate.pipeline.decision import (
    Bounce,
    Comment,
    Decision,
    FollowUp,
    Ignore,
    InternalNote,
    NewTicket,
    Quarantine,
)
from mailgate.pipeline.facts import Facts, Reference, SentNotification, TicketFacts
from mailgate.pipeline.inputs import prefetch
from mailgate.pipeline.reading import InboundEnvelope, Mail, Unreadable, read
from mailgate.routing import Router, UnusedPrefix

from .conftest import AUTHENTICATED, mail
from .test_hygiene import dsn

ANNA = "anna@mueller-logistik.de"
CHEF = "chef@mueller-logistik.de"
AGENT = "tech@support.example.com"
STRANGER = "fremd@gmail.com"
PETER = "peter@kunde.example"
SUPPORT = "support@support.example.com"
MUELLER = "Müller Logistik GmbH"
MUELLER_MEMBERS = frozenset({ANNA, CHEF, "berater@agentur.de"})

BASE: dict[str, Any] = {
    "mail": {"domains": ["support.example.com"], "address": SUPPORT, "recipients": ["support"]},
    "security": {"authserv_id": "mx.test"},
    "agents": {"addresses": [AGENT]},
    "limits": {"acks_per_hour": 2, "tickets_per_hour": 4},
    "routing": {
        "rules": [
            {
                "from": "*@monitoring.example",
                "organization": "Meier Bau",
                "priority": "high",
                "tags": ["monitoring"],
            },
            {"subject": "^STÖRUNG", "priority": "high", "tags": ["stoerung"]},
        ]
    },
    "organizations": [
        {
            "name": MUELLER,
            "aliases": ["Müller Logistik"],
            "domains": ["mueller-logistik.de"],
            "members": sorted(MUELLER_MEMBERS),
            "followers": [CHEF],
            "agencies": ["Agentur Blau"],
        },
        {"name": "Agentur Blau", "domains": ["agentur.de"], "members": ["berater@agentur.de"]},
        {
            "name": "Bäckerei Groß",
            "domains": ["baeckerei-gross.de"],
            "members": ["bernd@baeckerei-gross.de", "multi@x.example"],
            "primary_for": ["multi@x.example"],
        },
        {"name": "Meier Bau", "members": ["multi@x.example", "doppel@y.example"]},
        {"name": "Zweite Firma", "members": ["doppel@y.example"]},
        {"name": "Nordwind Reisen", "aliases": ["Nordwind"]},
        {"name": "Nordwind Logistik", "aliases": ["Nordwind"]},
    ],
}


def _config(**overlay: Any) -> Config:
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    for section, values in overlay.items():
        data[section] = {**data.get(section, {}), **values}
    return parse_config(data)


ROUTER = Router(_config())
DEFAULT_ORG = Router(_config(routing={"default_organization": "Agentur Blau"}))
DKIM_ONLY = Router(_config(security={"require_dkim_for_commands": True}))
NO_AUTHSERV = Router(parse_config({k: v for k, v in BASE.items() if k != "security"}))
FROM_HEADER = Router(_config(security={"agent_auth": ["from-header"]}))
TEAM_LIST = "team@support.example.com"
NOTIFY_LIST = Router(_config(agents={"notify": [TEAM_LIST, "leitung@kunde.example"]}))
NOTIFY_NONE = Router(_config(agents={"notify": []}))
LISA = "lisa@support.example.com"
TWO_AGENTS = Router(_config(agents={"addresses": [AGENT, LISA]}))
LISA_NOT_TOLD = Router(_config(agents={"addresses": [AGENT, LISA], "notify": [AGENT]}))
NO_AUTO_ASSIGN = Router(_config(agents={"assign_on_reply": False}))


def ticket(
    number: int = 5,
    status: str = "open",
    requester: str = ANNA,
    organization: str | None = MUELLER,
    participants: tuple[str, ...] = (),
    members: frozenset[str] = MUELLER_MEMBERS,
    assignee: str | None = None,
) -> TicketFacts:
    return TicketFacts(
        number,
        status,
        organization,
        requester,
        participants=participants,
        members=members,
        subject="Drucker kaputt",
        assignee=assignee,
    )


OPEN = ticket()
CLOSED = ticket(7, "closed")


@dataclass(frozen=True)
class Row:
    """One mail and what must become of it."""

    name: str
    raw: bytes | None  # None: input that is no mail
    expect: type
    reason: str  # a regular expression the whole reason must match
    facts: Facts = Facts()
    envelope: InboundEnvelope = InboundEnvelope(None, (SUPPORT,))
    router: Router = ROUTER
    dkim: DkimResult | None = None
    told: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # (kind, to); followers: "*"
    check: Callable[[Any], bool] = field(default=lambda d: True)


def asked(decision: Any) -> tuple[Change, ...]:
    """The changes the agent's commands ask for, without ``assign_on_reply``'s own."""
    return tuple(c for c in decision.changes if c.line != FIRST_ANSWER)


def lit(text: str) -> str:
    return re.escape(text)


def ours(name: str, raw: bytes, what: str, **kw: Any) -> Row:
    """A row for mail from an address of ours: ignored as a loop, the ledger says which."""
    return Row(name, raw, Ignore, lit(f"own mail (From is {what}), a loop"), **kw)


def agent(body: str, subject: str = "Re: [#5] Drucker kaputt", **kw: Any) -> bytes:
    """An agent's mail as our MTA hands it over: authenticated (see ``AUTHENTICATED``)."""
    kw["extra"] = AUTHENTICATED + kw.get("extra", "")
    return mail(sender=f"Tech <{AGENT}>", subject=subject, body=body, **kw)


def forged(body: str, subject: str = "Re: [#5] Drucker kaputt", **kw: Any) -> bytes:
    """A mail From the agent's address that nobody authenticated (``extra`` may add some)."""
    return mail(sender=f"Tech <{AGENT}>", subject=subject, body=body, **kw)


AR_OTHER = (
    "Authentication-Results: mx.other.example; dmarc=pass header.from=support.example.com\r\n"
)
AR_DKIM = "Authentication-Results: mx.test; dkim=pass header.d=example.com header.s=s1\r\n"
DMARC_FAIL = "Authentication-Results: mx.test; dmarc=fail header.from=mueller-logistik.de\r\n"
OUR_HOP = (
    "Received: from relay.example.net by mx.test (Postfix) with ESMTPS id 1; Thu, 26 Nov 2026\r\n"
)
FOREIGN_HOP = "Received: from pc by relay.example.net with ESMTP id 2; Thu, 26 Nov 2026\r\n"


def reply(sender: str = f"Anna Schmidt <{ANNA}>", body: str = "Danke!\n", **kw: Any) -> bytes:
    return mail(sender=sender, subject="Re: [#5] Drucker kaputt", body=body, **kw)


TAGGED = Facts(tag=OPEN)


def cc_row(
    name: str,
    body: str,
    check: Callable[[Any], bool],
    participants: tuple[str, ...] = (),
    told: tuple[tuple[str, tuple[str, ...]], ...] | None = None,
) -> Row:
    """An agent's ``#cc`` line on the open ticket #5, copied to ``participants``."""
    facts = Facts(tag=ticket(participants=participants))
    # Commands alone are an action, not an answer: an internal note, nothing to send.
    alone = all(line.startswith("#") for line in body.splitlines() if line.strip())
    expect = InternalNote if alone else Comment
    return Row(name, agent(body), expect, lit("subject tag [#5]"), facts, told=told, check=check)


def unused_prefix(decision: Any) -> UnusedPrefix | None:
    """What the acknowledgement says of a subject prefix that did not decide the
    organization (the one notification that carries it)."""
    (ack,) = (n for n in decision.notify if n.kind == "ticket_created")
    return ack.unused_prefix  # type: ignore[no-any-return]


def refused(error: str) -> Callable[[Any], bool]:
    """The check of a row whose one command is refused with ``error``: nothing changes."""
    return lambda d: asked(d) == () and d.notify[-1].errors == (error,)


ACK = ("ticket_created", (ANNA,))
FOLLOWERS = ("new_ticket_follower", ("*",))
CUSTOMER_REPLY = ("customer_reply", (AGENT,))
TEAM = ("agent_new_ticket", (AGENT,))
RETURNED = SentNotification(11, "ticket_created", 5, ("weg@kunde.example",))
ORIGINAL = mail(sender=f"Support <{SUPPORT}>", to="weg@kunde.example", message_id="<n1@s>")
FORWARD = (
    "Bitte kümmern.\n\n---------- Forwarded message ---------\n"
    "From: Anna Schmidt <anna@mueller-logistik.de>\nDate: Thu, 26 Nov 2026\n"
    "Subject: Drucker\n\nDer Drucker ist kaputt.\n"
)
QUOTED = "Geht wieder.\n\nAm 26.11.2026 um 10:00 schrieb Support:\n> Bitte neu starten.\n"
SECRET = "Zugang: Passwort: geheim123!\n"
NO_FROM = (
    b"To: support@support.example.com\r\nSubject: ohne Absender\r\n"
    b"Message-ID: <nofrom@x>\r\n\r\nHallo\r\n"
)
MEMBER = "sender is a member of Müller Logistik GmbH"
NULL = InboundEnvelope("", (SUPPORT,))
NOT_ACKED = "; not acknowledged: "
HYGIENE_TICKET = Router(_config(hygiene={"reports": "ticket"}))


def report_mail(
    report_type: str | None,
    part_type: str,
    part: str,
    sender: str = "Feedback <feedback@arf.mail.example>",
    subject: str = "Complaint",
    filename: str = "",
) -> bytes:
    """A multipart mail (a multipart/report when ``report_type``) with one machine part."""
    outer = f"multipart/report; report-type={report_type}" if report_type else "multipart/mixed"
    name = f'; name="{filename}"\r\nContent-Disposition: attachment; filename="{filename}"'
    return (
        f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
        "Message-ID: <report@mail.example>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0100\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: {outer}; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThis is a report.\r\n"
        f"--b\r\nContent-Type: {part_type}{name if filename else ''}\r\n\r\n{part}\r\n"
        "--b--\r\n"
    ).encode()


ARF = report_mail("feedback-report", "message/feedback-report", "Feedback-Type: abuse\r\n")
FORENSIC = report_mail(
    "feedback-report",
    "message/feedback-report",
    "Feedback-Type: auth-failure\r\nAuth-Failure: dmarc\r\n",
    sender="dmarc@mail.example",
)
TLSRPT = report_mail("tlsrpt", "application/tlsrpt+json", '{"policies": []}')
TLSRPT_PART = report_mail(None, "application/tlsrpt+gzip", "x", filename="r.json.gz")
DMARC_SUBJECT = mail(
    sender="noreply-dmarc-support@google.com",
    subject="Report domain: support.example.com Submitter: google.com Report-ID: 1",
)
DMARC_ZIP = report_mail(
    None,
    "application/zip",
    "UEsDBA==",
    sender="dmarc-reports@mail.example",
    subject="DMARC aggregate",
    filename="mail.example!support.example.com!1700000000!1700086400.zip",
)

UNKNOWN = "no organization: sender is unknown"

# --- emergencies: a keyword in the subject or first line; paged outside support hours ----
CLOSED_HOURS = Facts(support_open=False)
PAGE = ("emergency", (AGENT,))
URGENT = ("urgent", ("emergency",))
PAGER = "bereitschaft@pager.example.net"
ON_CALL = Router(_config(support={"emergency_notify": [PAGER]}))
NO_KEYWORDS = Router(_config(support={"emergency_keywords": []}))
MINE = Router(_config(support={"emergency_keywords": ["Havarie"]}))
EMERGENCY_TICKET = replace(OPEN, priority="urgent", tags=("emergency",))
KEYWORD_TICKET = replace(OPEN, subject="NOTFALL: Server down")


def urgent(d: Any) -> bool:
    return (d.priority, d.tags) == URGENT


def acknowledged_as_paged(d: Any) -> bool:
    """The acknowledgement may say the on-call team was alerted: it was."""
    paged = any(n.kind == "emergency" for n in d.notify)
    return all(n.paged == paged for n in d.notify if n.kind == "ticket_created")


def normal(d: Any) -> bool:
    return (d.priority, d.tags) == ("normal", ())


def escalates(d: Any) -> bool:
    return bool(d.emergency)


def stays(d: Any) -> bool:
    return not d.emergency


EMERGENCY_ROWS: list[Row] = [
    Row(
        "NOTFALL in the subject outside support hours: urgent, tagged, paged first",
        mail(subject="NOTFALL: Server down"),
        NewTicket,
        lit(f"{MEMBER}; emergency (NOTFALL in the subject)"),
        facts=CLOSED_HOURS,
        told=(PAGE, ACK, FOLLOWERS, TEAM),
        check=lambda d: urgent(d) and acknowledged_as_paged(d) and d.notify[1].paged,
    ),
    Row(
        "NOTFALL in the subject within support hours: urgent and tagged, nobody paged",
        mail(subject="NOTFALL: Server down"),
        NewTicket,
        lit(f"{MEMBER}; emergency (NOTFALL in the subject)"),
        told=(ACK, FOLLOWERS, TEAM),
        check=lambda d: urgent(d) and acknowledged_as_paged(d),
    ),
    Row(
        "reply prefixes, another case and a customer prefix do not hide the keyword",
        mail(subject="Re: AW: Müller Logistik: urgent – Server down"),
        NewTicket,
        r".*; emergency \(URGENT in the subject\)",
        facts=CLOSED_HOURS,
        told=(PAGE, ACK, FOLLOWERS, TEAM),
        check=urgent,
    ),
    Row(
        "a keyword inside a word is none (Notfallplan)",
        mail(subject="Notfallplan für 2027"),
        NewTicket,
        r"sender is a member of Müller Logistik GmbH(; .*)?",
        facts=CLOSED_HOURS,
        told=(ACK, FOLLOWERS, TEAM),
        check=normal,
    ),
    Row(
        "the keyword on the first line of the text counts",
        mail(body="\n  DRINGEND: Kasse 3 bucht nicht\nSeit heute früh.\n"),
        NewTicket,
        lit(f"{MEMBER}; emergency (DRINGEND in the first line)"),
        facts=CLOSED_HOURS,
        told=(PAGE, ACK, FOLLOWERS, TEAM),
        check=urgent,
    ),
    Row(
        "the keyword further down or in quoted text does not count",
        mail(body="Hallo,\nim Notfall bitte anrufen.\n> NOTFALL: alt\nURGENT\n"),
        NewTicket,
        lit(MEMBER),
        facts=CLOSED_HOURS,
        told=(ACK, FOLLOWERS, TEAM),
        check=normal,
    ),
    Row(
        "a page goes to [support] emergency_notify when it is set",
        mail(subject="EMERGENCY server down"),
        NewTicket,
        lit(f"{MEMBER}; emergency (EMERGENCY in the subject)"),
        facts=CLOSED_HOURS,
        router=ON_CALL,
        told=(("emergency", (PAGER,)), ACK, FOLLOWERS, TEAM),
        check=urgent,
    ),
    Row(
        "emergency_keywords = [] turns emergencies off",
        mail(subject="NOTFALL: Server down"),
        NewTicket,
        lit(MEMBER),
        facts=CLOSED_HOURS,
        router=NO_KEYWORDS,
        told=(ACK, FOLLOWERS, TEAM),
        check=normal,
    ),
    Row(
        "the admin's own keywords replace the default ones",
        mail(subject="havarie im Lager"),
        NewTicket,
        lit(f"{MEMBER}; emergency (Havarie in the subject)"),
        facts=CLOSED_HOURS,
        router=MINE,
        told=(PAGE, ACK, FOLLOWERS, TEAM),
        check=urgent,
    ),
    Row(
        "with nobody to notify there is no page, but the ticket is urgent",
        mail(subject="NOTFALL: Server down"),
        NewTicket,
        lit(f"{MEMBER}; emergency (NOTFALL in the subject)"),
        facts=CLOSED_HOURS,
        router=NOTIFY_NONE,
        told=(ACK, FOLLOWERS),
        check=lambda d: urgent(d) and acknowledged_as_paged(d),
    ),
    Row(
        "a customer's reply declaring an emergency escalates the open ticket and pages",
        reply(body="NOTFALL: jetzt geht gar nichts mehr\n"),
        Comment,
        lit("subject tag [#5]; emergency (NOTFALL in the first line)"),
        facts=Facts(tag=OPEN, support_open=False),
        told=(PAGE, CUSTOMER_REPLY),
        check=escalates,
    ),
    Row(
        "a customer's reply with the keyword added to the subject escalates too",
        mail(subject="Re: [#5] NOTFALL Drucker kaputt", body="Bitte dringend!\n"),
        Comment,
        lit("subject tag [#5]; emergency (NOTFALL in the subject)"),
        facts=Facts(tag=OPEN, support_open=False),
        told=(PAGE, CUSTOMER_REPLY),
        check=escalates,
    ),
    Row(
        "within support hours a reply escalates without a page",
        reply(body="NOTFALL: jetzt geht gar nichts mehr\n"),
        Comment,
        lit("subject tag [#5]; emergency (NOTFALL in the first line)"),
        facts=Facts(tag=OPEN),
        told=(CUSTOMER_REPLY,),
        check=escalates,
    ),
    Row(
        "a ticket that already is an emergency is not paged again",
        reply(body="NOTFALL: immer noch kaputt\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=EMERGENCY_TICKET, support_open=False),
        told=(CUSTOMER_REPLY,),
        check=stays,
    ),
    Row(
        "a reply whose subject only repeats the ticket's keyword declares nothing",
        mail(subject="Re: [#5] NOTFALL: Server down", body="Danke, läuft wieder.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=KEYWORD_TICKET, support_open=False),
        told=(CUSTOMER_REPLY,),
        check=stays,
    ),
    Row(
        "quoted history with the keyword declares nothing",
        reply(body="Danke!\n\nAm 26.11.2026 schrieb Support:\n> NOTFALL: Server down\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=OPEN, support_open=False),
        told=(CUSTOMER_REPLY,),
        check=stays,
    ),
    Row(
        "an agent's answer with the keyword declares nothing",
        agent("NOTFALL behoben, bitte testen.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=OPEN, support_open=False),
        check=stays,
    ),
    Row(
        "a reply declaring an emergency on a closed ticket opens an urgent follow-up, paged",
        reply(body="NOTFALL: wieder kaputt\n"),
        FollowUp,
        lit("follow-up of closed ticket #7; emergency (NOTFALL in the first line)"),
        facts=Facts(tag=CLOSED, support_open=False),
        told=(PAGE, ACK, FOLLOWERS, TEAM),
        check=lambda d: escalates(d) and acknowledged_as_paged(d),
    ),
]


ROWS: list[Row] = [
    # --- input that is no mail, no sender, our own mail, bounces -------------------------
    Row("not a mail", None, Quarantine, "unparseable: .+"),
    Row("no sender at all", NO_FROM, Quarantine, lit("no sender address (From)")),
    Row(
        "no From and a null envelope sender",
        NO_FROM,
        Quarantine,
        lit("no sender address (From)"),
        envelope=InboundEnvelope("", (SUPPORT,)),
    ),
    Row(
        "no From, envelope sender asks",
        NO_FROM,
        NewTicket,
        lit(MEMBER),
        envelope=InboundEnvelope(ANNA, (SUPPORT,)),
        told=(ACK, FOLLOWERS, TEAM),
    ),
    Row(
        "our loop header comes back",
        mail(extra="X-Mailgate-Loop: support.example.com\r\n"),
        Ignore,
        lit("own mail (X-Mailgate-Loop), a loop"),
    ),
    ours(
        "our own address writes",
        mail(sender=f"Support <{SUPPORT}>", subject="[#5] x"),
        "our address",
        facts=Facts(token=OPEN),
    ),
    ours(
        "our plus-address writes (a reply token of ours as sender)",
        mail(sender="Support <support+1-abc@support.example.com>", subject="Re: [#5] x"),
        "our plus-address",
        facts=Facts(token=OPEN),
    ),
    ours(
        "our postmaster writes",
        mail(sender="postmaster@support.example.com", subject="Postmaster-Hinweis"),
        "our postmaster",
        envelope=InboundEnvelope("postmaster@support.example.com", (SUPPORT,)),
    ),
    ours(
        "our MAILER-DAEMON writes what is no bounce",
        mail(sender="MAILER-DAEMON@Support.Example.COM (Mail Delivery System)", subject="Queue"),
        "our mailer-daemon",
        envelope=InboundEnvelope("root@support.example.com", (SUPPORT,)),
    ),
    Row(
        "our MAILER-DAEMON returns a notification: a bounce all the same",
        dsn(ORIGINAL, "weg@kunde.example", "5.1.1").replace(
            b"MAILER-DAEMON@mx.kunde.example", b"MAILER-DAEMON@support.example.com"
        ),
        Bounce,
        lit("bounce for 1 notification(s): weg@kunde.example 5.1.1"),
        facts=Facts(bounced=(RETURNED,)),
    ),
    Row(
        "a customer's postmaster is no loop of ours",
        mail(sender="postmaster@mueller-logistik.de", subject="Hinweis"),
        NewTicket,
        lit(
            "sender's domain mueller-logistik.de belongs to Müller Logistik GmbH"
            + NOT_ACKED
            + "robot sender postmaster@mueller-logistik.de (RFC 3834 §2)"
        ),
        envelope=InboundEnvelope("postmaster@mueller-logistik.de", (SUPPORT,)),
        told=(FOLLOWERS, TEAM),
    ),
    Row(
        "our plus-address's local part at a customer's domain is no loop of ours",
        mail(sender="support+1-abc@mueller-logistik.de", subject="Hallo"),
        NewTicket,
        lit("sender's domain mueller-logistik.de belongs to Müller Logistik GmbH"),
    ),
    Row(
        "another system's loop header is no loop of ours",
        mail(extra="X-Mailgate-Loop: other.example\r\n"),
        NewTicket,
        lit(MEMBER),
    ),
    Row(
        "hard bounce of an acknowledgement",
        dsn(ORIGINAL, "weg@kunde.example", "5.1.1"),
        Bounce,
        lit("bounce for 1 notification(s): weg@kunde.example 5.1.1"),
        facts=Facts(bounced=(RETURNED,)),
        told=(),
        check=lambda d: d.suppress == (("weg@kunde.example", "5.1.1"),) and d.returned,
    ),
    Row(
        "soft bounce suppresses nobody",
        dsn(ORIGINAL, "weg@kunde.example", "4.2.2"),
        Bounce,
        lit("bounce for 1 notification(s): weg@kunde.example 4.2.2"),
        facts=Facts(bounced=(RETURNED,)),
        check=lambda d: d.suppress == (),
    ),
    Row(
        "bounce of a mail we never sent",
        dsn(ORIGINAL, "weg@kunde.example", "5.1.1"),
        Bounce,
        lit("bounce for 0 notification(s): weg@kunde.example 5.1.1"),
        check=lambda d: d.returned == (),
    ),
    # --- never answered (RFC 3834 §2) and machine reports ---------------------------------
    Row(
        "a null envelope sender opens a ticket, unacknowledged",
        mail(),
        NewTicket,
        lit(MEMBER + NOT_ACKED + "null return path (RFC 3834 §2)"),
        envelope=NULL,
        told=(FOLLOWERS, TEAM),
    ),
    Row(
        "pipe(8) passes MAILER-DAEMON for a null sender",
        mail(),
        NewTicket,
        lit(MEMBER + NOT_ACKED + "null return path (RFC 3834 §2)"),
        envelope=InboundEnvelope("MAILER-DAEMON", (SUPPORT,)),
        told=(FOLLOWERS, TEAM),
    ),
    Row(
        "Return-Path: <> in pipe mode",
        mail(extra="Return-Path: <>\r\n"),
        NewTicket,
        lit(MEMBER + NOT_ACKED + "null Return-Path (RFC 3834 §2)"),
        told=(FOLLOWERS, TEAM),
    ),
    *(
        Row(
            f"a {local} sender is never answered",
            mail(sender=f"{local}@gmail.com"),
            NewTicket,
            lit(f"{UNKNOWN}{NOT_ACKED}robot sender {local}@gmail.com (RFC 3834 §2)"),
            envelope=InboundEnvelope(f"{local}@gmail.com", (SUPPORT,)),
            told=(TEAM,),
        )
        for local in (
            "postmaster",
            "noreply",
            "no-reply",
            "do-not-reply",
            "donotreply",
            "bounces+x=y",
            "MAILER-DAEMON",
        )
    ),
    Row(
        "a null sender's credentials are masked, but no warning goes back",
        mail(sender=STRANGER, body=SECRET),
        NewTicket,
        lit(UNKNOWN + NOT_ACKED + "null return path (RFC 3834 §2)"),
        envelope=NULL,
        told=(TEAM,),
        check=lambda d: "geheim123" not in d.body,
    ),
    Row(
        "a follow-up from a null sender is not acknowledged",
        reply(),
        FollowUp,
        lit("follow-up of closed ticket #7" + NOT_ACKED + "null return path (RFC 3834 §2)"),
        envelope=NULL,
        facts=Facts(tag=CLOSED),
        told=(FOLLOWERS, TEAM),
    ),
    Row(
        "an ARF feedback report is no ticket",
        ARF,
        Ignore,
        lit("report (ARF feedback report abuse, RFC 5965)"),
        envelope=NULL,
    ),
    Row(
        "a DMARC failure report (ARF auth-failure)",
        FORENSIC,
        Ignore,
        lit("report (DMARC failure report, RFC 7489)"),
    ),
    Row(
        "a DMARC aggregate report by its subject",
        DMARC_SUBJECT,
        Ignore,
        lit("report (DMARC aggregate report, RFC 7489)"),
    ),
    Row(
        "a DMARC aggregate report by its zip",
        DMARC_ZIP,
        Ignore,
        lit("report (DMARC aggregate report, RFC 7489)"),
    ),
    Row(
        "a TLS-RPT report",
        TLSRPT,
        Ignore,
        lit("report (TLS-RPT report, RFC 8460)"),
    ),
    Row(
        "a TLS-RPT report as a gzip part",
        TLSRPT_PART,
        Ignore,
        lit("report (TLS-RPT report, RFC 8460)"),
    ),
    Row(
        'with [hygiene] reports = "ticket" a report opens an unacknowledged ticket',
        ARF,
        NewTicket,
        lit(
            "no organization: sender is unknown"
            + NOT_ACKED
            + "report (ARF feedback report abuse, RFC 5965)"
        ),
        router=HYGIENE_TICKET,
        told=(TEAM,),
    ),
    Row(
        "a report that answers a ticket is still only a report",
        ARF,
        Ignore,
        lit("report (ARF feedback report abuse, RFC 5965)"),
        facts=TAGGED,
    ),
    # --- robots --------------------------------------------------------------------------
    Row(
        "out-of-office to no ticket",
        mail(extra="Auto-Submitted: auto-replied\r\n"),
        Ignore,
        lit("auto-reply (Auto-Submitted: auto-replied) to no ticket"),
    ),
    Row(
        "bulk mail",
        mail(extra="Precedence: bulk\r\n"),
        Ignore,
        lit("auto-reply (Precedence: bulk) to no ticket"),
    ),
    Row(
        "list mail",
        mail(extra="List-Id: <news.example>\r\n"),
        Ignore,
        lit("auto-reply (List-Id header (list mail)) to no ticket"),
    ),
    Row(
        "List-Unsubscribe mail",
        mail(extra="List-Unsubscribe: <mailto:u@news.example>\r\n"),
        Ignore,
        lit("auto-reply (List-Unsubscribe header (list mail)) to no ticket"),
    ),
    Row(
        "Precedence: list",
        mail(extra="Precedence: list\r\n"),
        Ignore,
        lit("auto-reply (Precedence: list) to no ticket"),
    ),
    Row(
        "Precedence: junk",
        mail(extra="Precedence: junk\r\n"),
        Ignore,
        lit("auto-reply (Precedence: junk) to no ticket"),
    ),
    Row(
        "out-of-office subject only",
        mail(subject="Abwesenheitsnotiz: bis Montag"),
        Ignore,
        lit("auto-reply (out-of-office subject) to no ticket"),
    ),
    Row(
        "vendor auto-reply header",
        mail(extra="X-Autoreply: yes\r\n"),
        Ignore,
        lit("auto-reply (X-Autoreply header) to no ticket"),
    ),
    Row(
        "robot answers a closed ticket",
        reply(extra="Auto-Submitted: auto-replied\r\n"),
        Ignore,
        lit("auto-reply (Auto-Submitted: auto-replied) to closed ticket #7"),
        facts=Facts(tag=CLOSED),
    ),
    Row(
        "robot answers an open ticket: internal note, nobody told, status kept",
        reply(extra="Auto-Submitted: auto-replied\r\n"),
        InternalNote,
        lit("subject tag [#5]; auto-reply (Auto-Submitted: auto-replied) kept as internal note"),
        facts=Facts(tag=ticket(status="pending")),
        told=(),
        check=lambda d: d.status == "pending",
    ),
    Row(
        "Auto-Submitted: no is a person",
        reply(extra="Auto-Submitted: no\r\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(CUSTOMER_REPLY,),
    ),
    # --- limits ------------------------------------------------------------------------------
    Row(
        "too many new tickets this hour",
        mail(),
        Quarantine,
        lit(f"rate_limited: 4 new tickets from {ANNA} in the last hour"),
        facts=Facts(recent_tickets=4),
    ),
    Row(
        "past the acknowledgement cap: a silent ticket",
        mail(),
        NewTicket,
        lit(f"{MEMBER}; no acknowledgement (more than 2 this hour)"),
        facts=Facts(recent_tickets=2),
        told=(FOLLOWERS, TEAM),
    ),
    Row(
        "below the caps",
        mail(),
        NewTicket,
        lit(MEMBER),
        facts=Facts(recent_tickets=1),
        told=(ACK, FOLLOWERS, TEAM),
    ),
    Row(
        "limits never hold back a reply",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=OPEN, recent_tickets=40),
    ),
    # --- threading ----------------------------------------------------------------------------
    Row(
        "reply token wins even for a stranger",
        mail(sender=STRANGER, subject="Antwort"),
        Comment,
        lit("reply token for ticket #5"),
        facts=Facts(token=OPEN),
        told=(CUSTOMER_REPLY,),
    ),
    Row(
        "token before references",
        reply(),
        Comment,
        lit("reply token for ticket #5"),
        facts=Facts(token=OPEN, references=(Reference(ticket(6), False),)),
    ),
    Row(
        "references from the requester",
        mail(subject="Antwort"),
        Comment,
        lit("In-Reply-To/References name ticket #5"),
        facts=Facts(references=(Reference(OPEN, False),)),
    ),
    Row(
        "references to a notification sent to this very sender",
        mail(sender=STRANGER, subject="Antwort"),
        Comment,
        lit("In-Reply-To/References name ticket #5"),
        facts=Facts(references=(Reference(OPEN, True),)),
    ),
    Row(
        "references from a stranger open a new ticket",
        mail(sender=STRANGER, subject="Antwort"),
        NewTicket,
        lit(f"{UNKNOWN}; references to ticket #5 from unauthorised sender"),
        facts=Facts(references=(Reference(OPEN, False),)),
    ),
    Row(
        "subject tag from the requester",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
    ),
    Row(
        "subject tag from a colleague in the organization",
        reply(sender=f"Chef <{CHEF}>"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
    ),
    Row(
        "a guessed tag from a stranger opens a new ticket",
        reply(sender=STRANGER),
        NewTicket,
        lit(f"{UNKNOWN}; tag [#5] from unauthorised sender"),
        facts=TAGGED,
        check=lambda d: d.subject == "Re: Drucker kaputt",
    ),
    Row(
        "reply to a closed ticket opens a follow-up",
        reply(body="Geht wieder nicht.\n"),
        FollowUp,
        lit("follow-up of closed ticket #7"),
        facts=Facts(tag=CLOSED),
        told=(ACK, FOLLOWERS, TEAM),
        check=lambda d: d.closed.id == 7 and d.body.startswith("Geht wieder nicht."),
    ),
    Row(
        "an agent's reply to a closed ticket opens a follow-up too",
        agent("Nachtrag.\n", subject="Re: [#7] Drucker kaputt"),
        FollowUp,
        lit(f"follow-up of closed ticket #7, opened by agent {AGENT}"),
        facts=Facts(tag=CLOSED),
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: d.author == AGENT and d.public,
    ),
    Row(
        "a follow-up with a password warns the sender",
        reply(body=SECRET),
        FollowUp,
        lit("follow-up of closed ticket #7"),
        facts=Facts(tag=CLOSED),
        told=(ACK, FOLLOWERS, TEAM, ("secret_warning", (ANNA,))),
        check=lambda d: "geheim123" not in d.body,
    ),
    # --- who of the team is told: [agents] notify ------------------------------------------
    Row(
        "[agents] notify names who hears of a new ticket, one mail each",
        mail(),
        NewTicket,
        lit(MEMBER),
        router=NOTIFY_LIST,
        told=(ACK, FOLLOWERS, ("agent_new_ticket", (TEAM_LIST, "leitung@kunde.example"))),
        check=lambda d: d.notify[2].each and d.notify[2].with_comment,
    ),
    Row(
        "[agents] notify = [] tells the team of no new ticket",
        mail(),
        NewTicket,
        lit(MEMBER),
        router=NOTIFY_NONE,
        told=(ACK, FOLLOWERS),
    ),
    Row(
        "[agents] notify hears of a follow-up too",
        reply(body="Geht wieder nicht.\n"),
        FollowUp,
        lit("follow-up of closed ticket #7"),
        facts=Facts(tag=CLOSED),
        router=NOTIFY_LIST,
        told=(ACK, FOLLOWERS, ("agent_new_ticket", (TEAM_LIST, "leitung@kunde.example"))),
    ),
    Row(
        "a customer's reply goes to [agents] notify",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=NOTIFY_LIST,
        told=(("customer_reply", (TEAM_LIST, "leitung@kunde.example")),),
    ),
    Row(
        "[agents] notify = [] silences customer replies too",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=NOTIFY_NONE,
        told=(),
    ),
    Row(
        "an agent's answer with [agents] notify = [] still reaches the customer",
        agent("Bitte neu starten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=NOTIFY_NONE,
        told=(("agent_reply", (ANNA,)),),
    ),
    # --- customers' replies ----------------------------------------------------------------
    Row(
        "requester answers a pending ticket: it reopens, agents are told",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(status="pending")),
        told=(CUSTOMER_REPLY,),
        check=lambda d: d.status == "open" and d.public,
    ),
    Row(
        "requester answers a solved ticket: it reopens",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(status="solved")),
        check=lambda d: d.status == "open",
    ),
    Row(
        "requester adds to a new ticket: it stays new",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(status="new")),
        check=lambda d: d.status == "new",
    ),
    Row(
        "the requester's Cc joins the ticket",
        reply(to=f"{SUPPORT}, Kollegin <kollegin@mueller-logistik.de>"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.participants == (("kollegin@mueller-logistik.de", "Kollegin"),),
    ),
    Row(
        "a colleague's Cc does not join",
        reply(sender=f"Chef <{CHEF}>", to=f"{SUPPORT}, x@mueller-logistik.de"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.participants == (),
    ),
    Row(
        "a customer's #status is just text",
        reply(body="#status solved\nDanke.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: asked(d) == () and d.body.startswith("#status solved"),
    ),
    Row(
        "a customer's password is masked and the customer warned",
        reply(body=SECRET),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(CUSTOMER_REPLY, ("secret_warning", (ANNA,))),
        check=lambda d: "geheim123" not in d.body,
    ),
    Row(
        "quoted history is cut from a reply",
        reply(body=QUOTED),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.body == "Geht wieder.",
    ),
    # --- agents' replies and commands ---------------------------------------------------------
    Row(
        "an agent answers: requester and participants are told",
        agent("Bitte neu starten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(status="new", participants=("cc@kunde.example",))),
        told=(("agent_reply", (ANNA, "cc@kunde.example")),),
        check=lambda d: d.status == "open",
    ),
    Row(
        "an agent's answer keeps a pending ticket pending",
        agent("Wir warten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(status="pending")),
        check=lambda d: d.status == "pending",
    ),
    Row(
        "#note keeps the comment internal",
        agent("#note\nKunde hat keinen Vertrag.\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(),
        check=lambda d: d.body == "Kunde hat keinen Vertrag.",
    ),
    Row(
        "#private is #note",
        agent("#private\nIntern.\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(),
    ),
    Row(
        "#status solved",
        agent("#status solved\n\nErledigt.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: asked(d) == (Change("status", "solved", "#status solved"),),
    ),
    Row(
        "#status with a word we do not know",
        agent("#status fertig\nErledigt.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(
            ("agent_reply", (ANNA,)),
            ("command_error", (AGENT,)),
        ),
        check=lambda d: (
            d.notify[-1].errors == ("#status fertig: status must be open, pending or solved",)
        ),
    ),
    Row(
        "#status without an argument",
        agent("#status\nErledigt.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.notify[-1].errors == ("#status: needs an argument",),
    ),
    Row(
        "#org moves the ticket, matched like a prefix",
        agent("#org Baeckerei Gross\n"),
        InternalNote,  # commands alone: an action, nothing for the customer
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: (
            asked(d) == (Change("organization", "Bäckerei Groß", "#org Baeckerei Gross"),)
        ),
    ),
    Row(
        "#org naming nothing",
        agent("#org Gibtsnicht Konzern\n"),
        InternalNote,  # commands alone: an action, nothing for the customer
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: (
            asked(d) == ()
            and d.notify[-1].errors
            == ("#org Gibtsnicht Konzern: no organization matches 'Gibtsnicht Konzern'",)
        ),
    ),
    Row(
        "#org with two exact matches is ambiguous, as in a subject",
        agent("#org Nordwind\n"),
        InternalNote,  # commands alone: an action, nothing for the customer
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: (
            asked(d) == ()
            and re.fullmatch(
                r"#org Nordwind: 'Nordwind' is ambiguous: Nordwind \w+ or Nordwind \w+",
                d.notify[-1].errors[0],
            )
            is not None
        ),
    ),
    Row(
        "#requester hands the ticket to a colleague, who is told",
        agent("#requester <chef@mueller-logistik.de>\nÜbernommen.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("agent_reply", (CHEF,)),),
        check=lambda d: (
            asked(d) == (Change("requester", CHEF, "#requester <chef@mueller-logistik.de>"),)
        ),
    ),
    Row(
        "#requester that is no address",
        agent("#requester Anna\n"),
        InternalNote,  # commands alone: an action, nothing for the customer
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.notify[-1].errors == ("#requester Anna: 'Anna' is not an email address",),
    ),
    Row(
        "an unknown command",
        agent("#prio hoch\nText.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: (
            d.notify[-1].errors
            == (
                "#prio hoch: unknown command; known are "
                "#status, #org, #requester, #cc, #assign, #note, #private",
            )
        ),
    ),
    cc_row(
        "#cc add copies someone on the ticket, who hears this very answer",
        "#cc add Peter <Peter@Kunde.example>\nDie Lösung.\n",
        lambda d: asked(d) == (Change("cc_add", PETER, "#cc add Peter <Peter@Kunde.example>"),),
        participants=(CHEF,),
        told=(("agent_reply", (ANNA, CHEF, PETER)),),
    ),
    cc_row(
        "#cc remove stops a participant, for this very answer already",
        "#status pending\n#cc REMOVE chef@mueller-logistik.de\nText.\n",
        lambda d: asked(d)[-1] == Change("cc_remove", CHEF, asked(d)[-1].line),
        participants=(CHEF, PETER),
        told=(("agent_reply", (ANNA, PETER)),),
    ),
    cc_row(
        "#cc with two addresses is refused and explained",
        "#cc add peter@kunde.example, eve@evil.example\nText.\n",
        refused(
            "#cc add peter@kunde.example, eve@evil.example: "
            "'peter@kunde.example, eve@evil.example' is not one email address"
        ),
        told=(("agent_reply", (ANNA,)), ("command_error", (AGENT,))),
    ),
    cc_row(
        "#cc naming one of our own addresses (a plus-address) is refused",
        "#cc add support+5-x@support.example.com\n",
        refused(
            "#cc add support+5-x@support.example.com: support+5-x@support.example.com "
            "is one of our own addresses, never a participant"
        ),
    ),
    cc_row(
        "#cc without add or remove",
        "#cc peter@kunde.example\n",
        refused("#cc peter@kunde.example: use #cc add ADDRESS or #cc remove ADDRESS"),
    ),
    Row(
        "a Cc does not bring back a participant a move left behind; only #cc add does",
        agent("Antwort.\n", extra=f"Cc: Peter <{PETER}>\r\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=replace(OPEN, inactive=frozenset({PETER}))),
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: d.participants == (),
    ),
    Row(
        "commands without DKIM are refused where DKIM is required; #note still counts",
        agent("#note\n#status solved\nIntern erledigt.\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=DKIM_ONLY,
        told=(("command_error", (AGENT,)),),
        check=lambda d: (
            asked(d) == ()
            and d.notify[0].errors
            == (
                "#status solved: refused: commands need a valid DKIM signature of "
                "support.example.com (this mail: not checked)",
            )
        ),
    ),
    Row(
        "commands with a passing DKIM signature of the agent's domain count",
        agent("#status pending\nWir warten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=DKIM_ONLY,
        dkim=DkimResult("pass", "support.example.com"),
        check=lambda d: asked(d) == (Change("status", "pending", "#status pending"),),
    ),
    Row(
        "an agent's Cc joins the ticket and hears the answer",
        agent("Siehe unten.\n", to=f"{SUPPORT}, Dienstleister <it@partner.example>"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("agent_reply", (ANNA, "it@partner.example")),),
        check=lambda d: d.participants == (("it@partner.example", "Dienstleister"),),
    ),
    Row(
        "an agent's note with a command: internal, and the change made",
        agent("#note\n#status pending\nWarten auf Lieferant.\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(),
        check=lambda d: asked(d) == (Change("status", "pending", "#status pending"),),
    ),
    # --- new tickets: routing -------------------------------------------------------------------
    Row(
        "a member writes",
        mail(),
        NewTicket,
        lit(MEMBER),
        told=(ACK, FOLLOWERS, TEAM),
        check=lambda d: d.organization == MUELLER and d.subject == "Drucker kaputt",
    ),
    Row(
        "a member names the customer",
        mail(subject="Müller Logistik: Drucker kaputt"),
        NewTicket,
        r"subject names Müller Logistik GmbH \(\d+\); sender is a member",
        check=lambda d: d.subject == "Drucker kaputt" and unused_prefix(d) is None,
    ),
    Row(
        "an agency names its customer",
        mail(sender="berater@agentur.de", subject="AW: Mueller Logistk: Drucker kaputt"),
        NewTicket,
        r"subject names Müller Logistik GmbH \(\d+\); sender is a member",
        check=lambda d: d.organization == MUELLER,
    ),
    Row(
        "an agency member of only the agency names the customer",
        mail(sender="neu@agentur.de", subject="Müller Logistik: Drucker kaputt"),
        NewTicket,
        r"sender's domain agentur\.de belongs to Agentur Blau; named Müller Logistik GmbH but "
        r"not authorised",
        check=lambda d: (
            unused_prefix(d) == UnusedPrefix("not_authorised", "Müller Logistik", (MUELLER,))
        ),
    ),
    Row(
        "a stranger names a customer",
        mail(sender=STRANGER, subject="Müller Logistik: Rechnung"),
        NewTicket,
        lit(f"{UNKNOWN}; named Müller Logistik GmbH but not authorised"),
        check=lambda d: d.organization is None,
    ),
    Row(
        "a prefix that names no organization",
        mail(subject="Xylophon Quartett: Anfrage"),
        NewTicket,
        lit(f"{MEMBER}; prefix 'Xylophon Quartett' names no organization"),
        check=lambda d: unused_prefix(d) == UnusedPrefix("unknown", "Xylophon Quartett"),
    ),
    Row(
        "an ambiguous prefix",
        mail(subject="Nordwind: Anfrage"),
        NewTicket,
        lit(MEMBER) + r"; prefix 'Nordwind' is ambiguous between Nordwind \w+ \(100\) and "
        r"Nordwind \w+ \(100\)",
        check=lambda d: (
            unused_prefix(d) is not None
            and unused_prefix(d) == UnusedPrefix("ambiguous", "Nordwind", unused_prefix(d).names)
            and set(unused_prefix(d).names) == {"Nordwind Reisen", "Nordwind Logistik"}
        ),
    ),
    Row(
        "a colleague at the customer's domain who is no member",
        mail(sender="neu@mueller-logistik.de"),
        NewTicket,
        lit("sender's domain mueller-logistik.de belongs to Müller Logistik GmbH"),
    ),
    Row(
        "a free-mail stranger",
        mail(sender=STRANGER),
        NewTicket,
        lit(UNKNOWN),
        told=(("ticket_created", (STRANGER,)), TEAM),
    ),
    Row(
        "the default organization catches strangers",
        mail(sender=STRANGER),
        NewTicket,
        lit("routing.default_organization"),
        router=DEFAULT_ORG,
        check=lambda d: d.organization == "Agentur Blau",
    ),
    Row(
        "a member of two with a primary",
        mail(sender="multi@x.example"),
        NewTicket,
        lit("sender's primary organization is Bäckerei Groß"),
    ),
    Row(
        "a member of two without a primary",
        mail(sender="doppel@y.example"),
        NewTicket,
        lit("sender is a member of 2 organizations; Meier Bau is first in the config"),
    ),
    Row(
        "an admin rule with an organization",
        mail(sender="alarm@monitoring.example", subject="Disk full"),
        NewTicket,
        lit("routing rule 1"),
        check=lambda d: (
            (d.organization, d.priority, d.tags) == ("Meier Bau", "high", ("monitoring",))
        ),
    ),
    Row(
        "an admin rule that only sets priority and tags",
        mail(subject="STÖRUNG Server down"),
        NewTicket,
        lit(f"{MEMBER}; rule 2 set priority/tags"),
        check=lambda d: (d.priority, d.tags) == ("high", ("stoerung",)),
    ),
    *EMERGENCY_ROWS,
    Row(
        "an agent forwards a customer's mail",
        agent(FORWARD, subject="Fwd: Drucker"),
        NewTicket,
        lit(f"{MEMBER}; forwarded by agent {AGENT}"),
        check=lambda d: (d.requester, d.requester_name) == (ANNA, "Anna Schmidt"),
    ),
    Row(
        "Cc'd people join a new ticket, but not us nor agents",
        mail(to=f"{SUPPORT}, {AGENT}, Peter <peter@kunde.example>, help@support.example.com"),
        NewTicket,
        lit(MEMBER),
        check=lambda d: d.participants == (("peter@kunde.example", "Peter"),),
    ),
    Row(
        "a password in the subject is masked",
        mail(subject="Passwort: geheim123! geht nicht"),
        NewTicket,
        lit(f"{MEMBER}; prefix 'Passwort' names no organization"),
        told=(ACK, FOLLOWERS, TEAM, ("secret_warning", (ANNA,))),
        check=lambda d: "geheim123" not in d.subject,
    ),
    Row(
        "no subject",
        mail(subject=""),
        NewTicket,
        lit(MEMBER),
        check=lambda d: d.subject == "(no subject)",
    ),
    Row(
        "no From, and the envelope's sender is our plus-address: a loop",
        NO_FROM,
        Ignore,
        lit("own mail (sender is our plus-address), a loop"),
        envelope=InboundEnvelope("support+9-abc@support.example.com", (SUPPORT,)),
    ),
    # --- agents must be authenticated (mailgate/pipeline/trust.py) -------------------------
    Row(
        "a forged agent From is an internal note, and its commands are not done",
        forged("#requester mallory@evil.example\nErledigt.\n"),
        InternalNote,
        lit(f"subject tag [#5]; {UNAUTHENTICATED}, kept as an internal note on ticket [#5]"),
        facts=TAGGED,
        told=(("agent_unverified", (AGENT,)),),
        check=lambda d: (
            asked(d) == ()
            and d.status == "open"
            and d.author_kind == "unverified_agent"
            and d.notify[0].errors[0].startswith("authentication-results: no pass")
        ),
    ),
    Row(
        "a forged agent mail that names no ticket waits in quarantine",
        forged("Bitte an alle Kunden.\n", subject="Rundschreiben"),
        Quarantine,
        lit(UNAUTHENTICATED),
        told=(("agent_unverified", (AGENT,)),),
    ),
    Row(
        "an Authentication-Results header of another server proves nothing",
        forged("Nachtrag.\n", extra=f"{AR_OTHER}"),
        InternalNote,
        rf".*{UNAUTHENTICATED}.*",
        facts=TAGGED,
    ),
    Row(
        "our authserv-id below a foreign relay's Received header proves nothing",
        forged("Nachtrag.\n", extra=f"{FOREIGN_HOP}{AUTHENTICATED}"),
        InternalNote,
        rf".*{UNAUTHENTICATED}.*",
        facts=TAGGED,
    ),
    Row(
        "our verdict above our own Received header authenticates the agent",
        forged("Nachtrag.\n", extra=f"{AUTHENTICATED}{OUR_HOP}{FOREIGN_HOP}"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: d.authentication == "dmarc=pass header.from=support.example.com",
    ),
    Row(
        "a milter's verdict just below our own Received header counts as well",
        forged("Nachtrag.\n", extra=f"{OUR_HOP}{AR_DKIM}{FOREIGN_HOP}"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: (
            d.author_kind == "agent" and d.authentication == "dkim=pass header.d=example.com"
        ),
    ),
    Row(
        "without [security] authserv_id no Authentication-Results header counts",
        agent("Nachtrag.\n"),
        InternalNote,
        rf".*{UNAUTHENTICATED}.*",
        facts=TAGGED,
        router=NO_AUTHSERV,
        check=lambda d: "authserv_id is not set" in d.notify[0].errors[0],
    ),
    Row(
        "mailgate's own DKIM check authenticates an agent (aligned signature)",
        forged("#status pending\nWir warten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        dkim=DkimResult("pass", "support.example.com"),
        check=lambda d: asked(d) == (Change("status", "pending", "#status pending"),),
    ),
    Row(
        "a DKIM signature of another domain does not",
        forged("Nachtrag.\n"),
        InternalNote,
        rf".*{UNAUTHENTICATED}.*",
        facts=TAGGED,
        dkim=DkimResult("pass", "evil.example"),
    ),
    Row(
        'agent_auth "from-header" trusts the From alone (closed networks)',
        forged("#status solved\nErledigt.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=FROM_HEADER,
        check=lambda d: asked(d) == (Change("status", "solved", "#status solved"),),
    ),
    Row(
        "an authenticated agent's own mail that names no ticket is ours: never a ticket",
        agent("Bitte prüfen.\n", subject="Bäckerei Groß: Ofen"),
        Ignore,
        lit(f"own mail (agent {AGENT}) names no ticket, a loop"),
    ),
    Row(
        "an agent's mail of commands alone sends the customer nothing",
        agent("#status solved\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(),
        check=lambda d: asked(d) == (Change("status", "solved", "#status solved"),),
    ),
    Row(
        "an agent's note to a closed ticket opens a follow-up that stays internal",
        agent("#note\nKunde hat angerufen, intern.\n", subject="Re: [#7] Drucker kaputt"),
        FollowUp,
        lit(f"follow-up of closed ticket #7, opened by agent {AGENT}"),
        facts=Facts(tag=CLOSED),
        told=(),
        check=lambda d: not d.public and d.author_kind == "agent",
    ),
    Row(
        "an agent's answer to a closed ticket reaches the customer on the follow-up",
        agent("#status pending\nBitte testen.\n", subject="Re: [#7] Drucker kaputt"),
        FollowUp,
        lit(f"follow-up of closed ticket #7, opened by agent {AGENT}"),
        facts=Facts(tag=CLOSED),
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: (
            d.public
            and d.status == "open"
            and asked(d) == (Change("status", "pending", "#status pending"),)
        ),
    ),
    Row(
        "a customer whose domain failed DMARC is a stranger: the tag does not thread",
        mail(subject="Re: [#5] Drucker kaputt", extra=DMARC_FAIL),
        NewTicket,
        lit(
            "dmarc=fail header.from=mueller-logistik.de, treated as a stranger: no "
            "organization: sender is unknown; tag and references ignored: "
            "dmarc=fail header.from=mueller-logistik.de"
        ),
        facts=TAGGED,
        check=lambda d: d.organization is None,
    ),
    Row(
        "a customer whose domain failed DMARC may still use the reply token",
        mail(subject="Re: Drucker kaputt", extra=DMARC_FAIL),
        Comment,
        lit("reply token for ticket #5"),
        facts=Facts(token=OPEN),
    ),
    Row(
        "a customer whose domain failed DMARC names no organization by prefix",
        mail(subject="Müller Logistik: Rechnung", extra=DMARC_FAIL),
        NewTicket,
        r"dmarc=fail .*, treated as a stranger: no organization: sender is unknown",
        check=lambda d: d.organization is None,
    ),
    Row(
        "another ticket's tag leaves a new ticket's subject",
        mail(sender=STRANGER, subject="Wie [#5] besprochen"),
        NewTicket,
        lit(f"{UNKNOWN}; tag [#5] from unauthorised sender"),
        facts=TAGGED,
        check=lambda d: d.subject == "Wie besprochen",
    ),
    # --- owners: #assign, assign_on_reply, customer replies to the assignee ------------------
    Row(
        "#assign me takes the ticket; commands alone tell nobody",
        agent("#assign me\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(),
        # The note shows what the mail asked for, not an empty comment.
        check=lambda d: (
            d.changes == (Change("assignee", AGENT, "#assign me"),) and d.body == "#assign me"
        ),
    ),
    Row(
        "#assign gives the ticket to another agent",
        agent(f"#assign Lisa <{LISA}>\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=TWO_AGENTS,
        check=lambda d: d.changes == (Change("assignee", LISA, f"#assign Lisa <{LISA}>"),),
    ),
    Row(
        "#assign none leaves the ticket to the team",
        agent("#assign none\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(assignee=AGENT)),
        check=lambda d: d.changes == (Change("assignee", "", "#assign none"),),
    ),
    Row(
        "#assign of someone who is not an agent is refused and explained",
        agent(f"#assign {ANNA}\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("command_error", (AGENT,)),),
        check=refused(
            f"#assign {ANNA}: {ANNA} is not an agent address ([agents] addresses): "
            "only agents handle tickets"
        ),
    ),
    Row(
        "the first public answer to an unassigned ticket takes it (assign_on_reply)",
        agent("Bitte neu starten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        told=(("agent_reply", (ANNA,)),),
        check=lambda d: d.changes == (Change("assignee", AGENT, FIRST_ANSWER),),
    ),
    Row(
        "an answer with its own #assign is not taken over by assign_on_reply",
        agent(f"#assign {LISA}\nLisa meldet sich.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=TWO_AGENTS,
        check=lambda d: d.changes == (Change("assignee", LISA, f"#assign {LISA}"),),
    ),
    Row(
        "an answer to a ticket a colleague handles leaves it with them",
        agent("Ich springe kurz ein.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(assignee=LISA)),
        router=TWO_AGENTS,
        check=lambda d: d.changes == (),
    ),
    Row(
        "an internal note never takes a ticket",
        agent("#note\nIntern.\n"),
        InternalNote,
        lit("subject tag [#5]"),
        facts=TAGGED,
        check=lambda d: d.changes == (),
    ),
    Row(
        "assign_on_reply = false: answering takes nothing",
        agent("Bitte neu starten.\n"),
        Comment,
        lit("subject tag [#5]"),
        facts=TAGGED,
        router=NO_AUTO_ASSIGN,
        check=lambda d: d.changes == (),
    ),
    Row(
        "a customer's reply goes to the assignee alone",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(assignee=LISA)),
        router=TWO_AGENTS,
        told=(("customer_reply", (LISA,)),),
    ),
    Row(
        "a customer's reply to a ticket of a former agent goes to the team",
        reply(),
        Comment,
        lit("subject tag [#5]"),
        facts=Facts(tag=ticket(assignee="weg@support.example.com")),
        told=(CUSTOMER_REPLY,),
    ),
    Row(
        "a customer's reply to a closed ticket tells the team and the ticket's assignee",
        reply(),
        FollowUp,
        lit("follow-up of closed ticket #5"),
        facts=Facts(tag=ticket(status="closed", assignee=LISA)),
        router=LISA_NOT_TOLD,
        told=(
            ("ticket_created", (ANNA,)),
            ("new_ticket_follower", ("*",)),
            ("agent_new_ticket", (AGENT, LISA)),
        ),
    ),
]


def _mail(row: Row) -> Mail | Unreadable:
    if row.raw is None:
        try:
            parse(b"\x00\x01 nothing like a mail")
        except UnparseableMessage as exc:
            return Unreadable(f"unparseable: {exc}")
        raise AssertionError("the parser took noise for a mail")
    return read(parse(row.raw), row.envelope, row.dkim)


def told(decision: Decision) -> tuple[tuple[str, tuple[str, ...]], ...]:
    notify = getattr(decision, "notify", ())
    return tuple((n.kind, ("*",) if n.followers else n.to) for n in notify)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_decide(row: Row) -> None:
    """The kind of decision, the ledger's reason and who is told, for one mail."""
    decision = decide(_mail(row), row.facts, row.router)
    assert type(decision) is row.expect, decision
    assert re.fullmatch(row.reason, decision.reason), decision.reason
    if row.told is not None:
        assert told(decision) == row.told
    assert row.check(decision), decision


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_work_done_ahead_changes_no_decision(row: Row) -> None:
    """What a parser process computes ahead is an input, never a different answer."""
    mail_ = _mail(row)
    hints = prefetch(row.router, mail_) if isinstance(mail_, Mail) else None
    assert decide(mail_, row.facts, row.router, hints) == decide(mail_, row.facts, row.router)


def test_the_table_is_large_and_every_stage_decides_somewhere() -> None:
    """At least 60 rows, and each stage of the ladder is the one that decides in some row."""
    assert len(ROWS) >= 60
    deciders = set()
    for row in ROWS:
        mail_ = _mail(row)
        if isinstance(mail_, Unreadable):
            continue
        from mailgate.pipeline.decide import Case

        case = Case(mail_, row.facts, row.router, None)
        deciders.add(next(stage.__name__ for stage in STAGES if stage(case) is not None))
    assert deciders == {stage.__name__ for stage in STAGES}


@pytest.mark.parametrize(
    ("typed", "address"),
    [
        ("peter@kunde.example", PETER),
        ("<Peter@Kunde.Example>", PETER),
        ('"Peter, Kunde" <peter@kunde.example>', PETER),
        ("peter@kunde.example\r\nBcc: eve@evil.example", None),  # a header of its own
        ("peter@kunde.example\nBcc: eve@evil.example", None),
        ("=?utf-8?q?Evil=0D=0ABcc:_x@y.com?= <peter@kunde.example>", None),
        ("peter@kunde.example, eve@evil.example", None),
        ("Kunden: peter@kunde.example;", None),  # a group
        ("peter", None),
        ("peter@", None),
        ("@kunde.example", None),
        ('"eve@evil.example"@kunde.example', None),
        ("peter kunde@example", None),
        ("a@b@kunde.example", None),
        ("", None),
    ],
)
def test_an_address_in_a_command_is_one_mailbox_or_nothing(typed: str, address: str | None) -> None:
    """``#cc`` takes what the stdlib's RFC 5322 parser finds, never text split by hand."""
    assert command_address(typed) == address


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_internal_text_is_sent_to_agents_only(row: Row) -> None:
    """For every path of the ladder: a decision whose comment is internal (a ``#note``, an
    unauthenticated agent, a robot) never sends that comment to anyone but agents. The
    store refuses such rows again (mailgate/db/outbox.py), and so does rendering."""
    decision = decide(_mail(row), row.facts, row.router)
    if getattr(decision, "public", True):
        return
    agents = row.router.agents
    for note in getattr(decision, "notify", ()):
        if note.with_comment:
            assert not note.followers and set(note.to) <= agents, (decision.reason, note)
