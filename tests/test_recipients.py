"""Per-recipient results: who accepted a notification is never sent it again."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from mailgate.config import Config
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.models import Outbox
from mailgate.outbound import Verdict, settle
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, run_cli
from .sink import Sink

ANNA = "anna@mueller-logistik.de"  # the requester
CHEF = "chef@mueller-logistik.de"  # in Cc of her mail: a participant
AGENT = "tech@support.example.com"


def _first_attempt(
    relayed: tuple[Config, Path], store: Store, clock: Clock, sink: Sink, answers: dict[str, str]
) -> tuple[Jobs, tuple[int, int, int]]:
    """An agent's answer to a ticket with a participant (one row for anna and chef), sent
    once while the relay answers RCPT for each address as ``answers`` says; (sent, retry,
    failed) of that run."""
    config, _ = relayed
    cc = f"Cc: Chef <{CHEF}>\r\n"
    created = ingest(store, config, mail(extra=cc), InboundEnvelope(), clock())
    jobs = Jobs(store, config)
    assert jobs.deliver_outbox(clock()).sent == 3  # acknowledgement, follower's, agent's notices
    subject = f"Re: [#{created.ticket}] Drucker kaputt"
    answer = mail(sender=AGENT, subject=subject, body="Erledigt.", extra=AUTHENTICATED)
    ingest(store, config, answer, InboundEnvelope(), clock())
    assert _reply(store).recipients == [ANNA, CHEF]
    sink.received.clear()
    for address, code in answers.items():
        sink.answer_rcpt(address, code)
    stats = jobs.deliver_outbox(clock())
    return jobs, (stats.sent, stats.retry, stats.failed)


def _reply(store: Store) -> Outbox:
    with store.transaction() as s:
        row = s.scalars(select(Outbox).where(Outbox.kind == "agent_reply")).one()
        s.expunge(row)
        return row


def _listed(path: Path) -> dict[str, object]:
    proc = run_cli(path, "outbox", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = [r for r in json.loads(proc.stdout) if r["kind"] == "agent_reply"]
    assert isinstance(row, dict)
    return row


def test_a_4xx_for_one_recipient_retries_only_that_one(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """chef's 450 retries chef alone; anna, who accepted, does not get the mail twice."""
    jobs, stats = _first_attempt(relayed, store, clock, sink, {CHEF: "450"})
    assert stats == (0, 1, 0)
    assert [r.rcpt_to for r in sink.received] == [[ANNA]]
    row = _reply(store)
    assert (row.status, row.payload["accepted"]) == ("retry", [ANNA])
    assert (
        row.last_error == f"{CHEF}: 450 4.2.1 Mailbox busy, try again later (delivered to {ANNA})"
    )
    listed = _listed(relayed[1])
    assert (listed["status"], listed["accepted"], listed["to"]) == ("retry", [ANNA], [ANNA, CHEF])

    assert jobs.deliver_outbox(clock()).retry == 0  # not due before its backoff
    clock.advance(minutes=1)
    stats = jobs.deliver_outbox(clock())
    assert (stats.sent, stats.retry, stats.failed) == (1, 0, 0)
    assert [r.rcpt_to for r in sink.received] == [[ANNA], [CHEF]]
    assert sink.received[0].data == sink.received[1].data  # the very same message
    listed = _listed(relayed[1])
    assert (listed["status"], listed["accepted"], listed["last_error"]) == (
        "sent",
        [ANNA, CHEF],
        None,
    )
    history = listed["history"]
    assert isinstance(history, list)
    assert [(a["to"], a["result"]) for a in history] == [([ANNA, CHEF], "retry"), ([CHEF], "sent")]


def test_a_5xx_for_one_recipient_fails_the_row_without_resending(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """550 for chef, 250 for anna: failed (chef never gets it), and anna is not sent it again."""
    jobs, stats = _first_attempt(relayed, store, clock, sink, {CHEF: "550"})
    assert stats == (0, 0, 1)
    listed = _listed(relayed[1])
    assert listed["status"] == "failed"
    assert listed["accepted"] == [ANNA]
    assert listed["refused"] == {CHEF: "550 5.1.1 No such user"}
    assert listed["last_error"] == f"{CHEF}: 550 5.1.1 No such user (delivered to {ANNA})"
    clock.advance(days=1)
    assert jobs.deliver_outbox(clock()).as_json() == {"sent": 0, "retry": 0, "failed": 0}
    assert [r.rcpt_to for r in sink.received] == [[ANNA]]


def test_a_4xx_and_a_5xx_in_one_attempt(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """Both refused, differently: only the 4xx is retried; the row ends failed for chef."""
    jobs, stats = _first_attempt(relayed, store, clock, sink, {ANNA: "450", CHEF: "550"})
    assert stats == (0, 1, 0)
    assert sink.received == []  # nobody accepted: no DATA
    row = _reply(store)
    assert (row.payload.get("accepted"), row.payload["refused"]) == (
        None,
        {CHEF: "550 5.1.1 No such user"},
    )
    clock.advance(minutes=1)
    assert jobs.deliver_outbox(clock()).failed == 1
    assert [r.rcpt_to for r in sink.received] == [[ANNA]]
    row = _reply(store)
    assert row.status == "failed" and row.payload["accepted"] == [ANNA]
    assert row.last_error == f"{CHEF}: 550 5.1.1 No such user (delivered to {ANNA})"


def test_settle_names_recipients_only_when_they_differ() -> None:
    """One reply for the whole attempt reads as the relay's; mixed results name each address."""
    everyone = settle(
        ["a@x.de", "b@x.de"], dict.fromkeys(["a@x.de", "b@x.de"], (Verdict.RETRY, "421 busy"))
    )
    assert (everyone.verdict, everyone.error, everyone.accepted) == (Verdict.RETRY, "421 busy", ())
    done = settle(["b@x.de"], {}, ["a@x.de"])
    assert (done.verdict, done.error, done.accepted) == (Verdict.SENT, None, ("a@x.de", "b@x.de"))
    gone = settle(["a@x.de"], {"a@x.de": (Verdict.FAILED, "550 no")})
    assert (gone.verdict, gone.error, gone.refused) == (
        Verdict.FAILED,
        "550 no",
        {"a@x.de": "550 no"},
    )


def test_ingest_refuses_a_mailbox_of_our_domain_that_is_not_ours(config_path: Path) -> None:
    """The pipe's answer to what the listener refuses with 550 5.1.1: exit 67, nothing kept."""
    raw = mail()
    refused = run_cli(config_path, "ingest", "-", "--rcpt", "tech@support.example.com", stdin=raw)
    assert refused.returncode == 67, refused.stderr
    assert b"not a mailbox of ours" in refused.stderr and b"Traceback" not in refused.stderr
    taken = run_cli(config_path, "ingest", "--rcpt", "help@support.example.com", stdin=raw)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["action"] == "created"
    elsewhere = run_cli(config_path, "ingest", "--rcpt", "support@alias.example", stdin=raw)
    assert elsewhere.returncode == 0, elsewhere.stderr  # the MTA's aliases: taken as before
    assert json.loads(elsewhere.stdout)["action"] == "duplicate"
