"""Emergencies over the real listener: a keyword makes a ticket urgent and, outside support
hours, pages the on-call addresses before anything else goes out.

Mail goes in over SMTP, the outbox job relays to a real SMTP sink, and the clock is set to
the hour each case needs (Saturday, Tuesday 10:00, Berlin's holidays); nothing is mocked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config, parse_config
from mailgate.hours import SupportHours
from mailgate.jobs import CLAIM_ORDER, Jobs
from mailgate.models import Outbox, Ticket
from mailgate.store import Store

from .conftest import Clock, mail, run_cli, send
from .sink import Sink

AGENT = "tech@support.example.com"
ANNA = "anna@mueller-logistik.de"
PAGER = "bereitschaft@pager.example.net"
PHONE = "+49 30 1234567-0"
HOTLINE = "+49 30 1234567-99"
SUPPORT = {"support": {"phone": PHONE, "emergency_phone": HOTLINE}}

# Berlin wall-clock 10:00 (UTC+1 in winter, UTC+2 in summer).
SATURDAY = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TUESDAY = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
UNITY_DAY = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)  # Tag der Deutschen Einheit (a Saturday)
CHRISTMAS = datetime(2026, 12, 25, 9, 0, tzinfo=UTC)  # a Friday: closed for the holiday alone


@pytest.fixture
def config(make_config: Callable[..., tuple[Config, Path]], sink: Sink, request: Any) -> Config:
    """Relayed to the sink, with the phone numbers and the overlay a test names."""
    relay = {"outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port}}
    overlay: dict[str, Any] = getattr(request, "param", {})
    support = {**SUPPORT["support"], **overlay.get("support", {})}
    return make_config({**relay, **overlay, "support": support})[0]


def kinds(store: Store) -> list[tuple[str, int | None, list[str]]]:
    with store.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id))
        return [(o.kind, o.ticket_id, o.recipients) for o in rows]


def ticket(store: Store, number: int) -> tuple[str, list[str]]:
    with store.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        return found.priority, list(found.tags)


def text_of(message: EmailMessage) -> str:
    """The plain-text part with its lines joined: templates wrap sentences at 72."""
    part = message.get_body(("plain",))
    assert part is not None
    return " ".join(str(part.get_content()).split())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def deliver(config: Config, store: Store, clock: Clock, sink: Sink) -> list[EmailMessage]:
    Jobs(store, config).deliver_outbox(clock())
    return [r.message for r in sink.received]


def to(message: EmailMessage) -> str:
    return str(message["To"])


def ack_of(sent: list[EmailMessage], number: int) -> EmailMessage:
    """The acknowledgement of ticket ``number`` among the mails sent (not its secret warning)."""
    (ack,) = [
        m
        for m in sent
        if to(m) == ANNA
        and f"[#{number}]" in str(m["Subject"])
        and "vielen Dank für Ihre Nachricht" in text_of(m)
    ]
    return ack


def test_saturday_notfall_is_urgent_and_pages_before_the_acknowledgement(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    clock.now = SATURDAY
    # A ticket opened earlier is still waiting in the outbox: the page overtakes it.
    assert send(server, mail(subject="Rechnung November", message_id="<r@ml>")) == {}
    body = "Hallo,\nder Server antwortet nicht.\nZugang: Passwort: geheim123!\n"
    assert send(server, mail(subject="NOTFALL: Server down", body=body)) == {}
    assert ticket(store, 1) == ("normal", [])
    assert ticket(store, 2) == ("urgent", ["emergency"])
    pages = [(k, n, r) for k, n, r in kinds(store) if k == "emergency"]
    assert pages == [("emergency", 2, [AGENT])]

    sent = deliver(config, store, clock, sink)
    page, *others = sent
    assert to(page) == AGENT and str(page["Subject"]).startswith("EMERGENCY [#2] NOTFALL")
    text = text_of(page)
    assert "NOTFALL außerhalb der Supportzeiten" in text
    assert "Müller Logistik GmbH" in text and ANNA in text
    assert "der Server antwortet nicht." in text
    assert "geheim123" not in text and "geheim123" not in html_of(page)  # masked
    assert "emergency (NOTFALL in the subject)" in text  # the ticket's reason
    assert str(page["Reply-To"]).startswith("support+2-")  # a reply is an agent reply
    # The acknowledgement went out after the page and gives the hotline.
    ack = ack_of(others, 2)
    ack_text = text_of(ack)
    assert f"Notfall-Hotline: {HOTLINE}" in ack_text and f"Telefon: {PHONE}" not in ack_text
    assert "Rufbereitschaft ist alarmiert" in ack_text
    assert HOTLINE in html_of(ack)
    # The other ticket's acknowledgement gives the hotline too and says what NOTFALL does.
    other = ack_of(others, 1)
    assert "schreiben Sie bitte NOTFALL in den Betreff" in text_of(other)
    assert "Rufbereitschaft wird sofort alarmiert" in text_of(other)


def test_tuesday_morning_pages_nobody_and_gives_the_office_number(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    clock.now = TUESDAY
    assert send(server, mail(subject="NOTFALL: Server down")) == {}
    assert ticket(store, 1) == ("urgent", ["emergency"])
    assert "emergency" not in [kind for kind, _, _ in kinds(store)]
    (ack,) = [m for m in deliver(config, store, clock, sink) if to(m) == ANNA]
    text = text_of(ack)
    assert f"Telefon: {PHONE}" in text and HOTLINE not in text
    assert "als Notfall gekennzeichnet" in text and "alarmiert" not in text


@pytest.mark.parametrize("when", [UNITY_DAY, CHRISTMAS], ids=["2026-10-03", "2026-12-25"])
def test_a_berlin_holiday_is_outside_support_hours(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink, when: datetime
) -> None:
    hours = SupportHours(config.hours)
    assert hours.is_holiday(when.astimezone(hours.zone).date())
    clock.now = when
    assert send(server, mail(subject="Dringend: Kasse 3 bucht nicht")) == {}
    assert [(k, r) for k, _, r in kinds(store) if k == "emergency"] == [("emergency", [AGENT])]
    first, *_ = deliver(config, store, clock, sink)
    assert to(first) == AGENT


@pytest.mark.parametrize(
    "config", [{"support": {"emergency_notify": [PAGER]}}], indirect=True, ids=["pager"]
)
def test_a_reply_declaring_an_emergency_escalates_and_pages_once(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    """The acknowledgement's promise: "replying to this email works as well"."""
    clock.now = TUESDAY
    assert send(server, mail(message_id="<d@ml>")) == {}
    assert ticket(store, 1) == ("normal", [])
    clock.now = SATURDAY
    reply = mail(
        subject="Re: [#1] Drucker kaputt",
        body="NOTFALL: jetzt steht die ganze Halle\n\n> Hallo,\n> der Drucker druckt nicht.\n",
        extra="In-Reply-To: <d@ml>\r\n",
    )
    assert send(server, reply) == {}
    assert ticket(store, 1) == ("urgent", ["emergency"])
    assert [(k, r) for k, _, r in kinds(store) if k == "emergency"] == [("emergency", [PAGER])]
    clock.advance(minutes=5)
    again = mail(subject="Re: [#1] Drucker kaputt", body="NOTFALL! Bitte melden!\n")
    assert send(server, again) == {}
    assert [k for k, _, _ in kinds(store)].count("emergency") == 1  # paged once per ticket
    page, *_ = deliver(config, store, clock, sink)
    assert to(page) == PAGER
    assert "jetzt steht die ganze Halle" in text_of(page)


def test_quoted_keywords_and_words_that_only_contain_one_page_nobody(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    clock.now = SATURDAY
    assert send(server, mail(subject="Notfallplan 2027", body="Hallo,\n> NOTFALL\n")) == {}
    assert ticket(store, 1) == ("normal", [])
    assert "emergency" not in [kind for kind, _, _ in kinds(store)]


def test_claim_order_puts_pages_first_and_keeps_the_due_index() -> None:
    """The claim's WHERE is unchanged (ix_outbox_status_due serves it); the order only
    sorts what it found, pages first."""
    sql = str(select(Outbox.id).order_by(*CLAIM_ORDER))
    assert "CASE WHEN (outbox.kind = :kind_1) THEN :param_1 ELSE :param_2 END, outbox.id" in sql


def test_route_json_says_whether_a_subject_is_an_emergency(config_path: Path) -> None:
    def route(subject: str) -> dict[str, Any]:
        result = run_cli(config_path, "route", "--json", "--from", ANNA, subject)
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    hot = route("AW: NOTFALL: Server down")
    assert (hot["emergency"], hot["priority"], hot["tags"]) == (True, "urgent", ["emergency"])
    assert route("Notfallplan")["emergency"] is False


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ('phone = ""', "[support].phone: must be a non-empty string"),
        ('emergency_phone = "Bitte anrufen"', "[support].emergency_phone: must be a phone"),
        ('emergency_keywords = ["NOT FALL"]', "[support].emergency_keywords: item 1"),
        ('emergency_keywords = "NOTFALL"', "[support].emergency_keywords: must be a list"),
        ('emergency_notify = ["bereitschaft"]', "[support].emergency_notify: item 1"),
        (
            'emergency_notify = ["oncall@support.example.com"]',
            "[support].emergency_notify: 'oncall@support.example.com' is inside [mail] domains",
        ),
        ("pager = true", "[support].pager: unknown key"),
    ],
)
def test_check_config_refuses_a_bad_support_section(
    tmp_path: Path, section: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[mail]\ndomains = ["support.example.com"]\n[support]\n{section}\n')
    result = run_cli(path, "check-config")
    assert result.returncode == 2
    assert problem in result.stderr.decode()


def test_check_config_warns_when_nobody_would_be_paged(tmp_path: Path) -> None:
    path = tmp_path / "nobody.toml"
    path.write_text(
        '[agents]\naddresses = ["tech@agentur.example"]\nnotify = []\n'
        '[support]\nemergency_phone = "+49 30 1234567-99"\n'
    )
    result = run_cli(path, "check-config")
    assert result.returncode == 0, result.stderr
    assert "warning: [support].emergency_notify: nobody is paged" in result.stdout.decode()
    path.write_text(path.read_text() + 'emergency_notify = ["oncall@pager.example.net"]\n')
    result = run_cli(path, "check-config")
    assert "nobody is paged" not in result.stdout.decode()
    assert "paged outside hours: oncall@pager.example.net" in result.stdout.decode()


def test_paged_addresses_count_as_the_team() -> None:
    """They read the ticket, so the outbox's visibility rule must let them."""
    config = parse_config({"support": {"emergency_notify": [PAGER]}})
    assert PAGER in config.team and PAGER not in config.agents.team
    default = parse_config({"agents": {"addresses": ["tech@agentur.example"]}})
    assert default.support.paged(default.agents.notified) == ("tech@agentur.example",)
