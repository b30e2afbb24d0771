"""The decision for one mail: a pure function of the mail, the facts and the config.

Stages are tried in the order of :data:`STAGES`; the first one that decides wins. Each is a
small function of a :class:`Case` that returns a :class:`~mailgate.pipeline.decision.Decision`
or None ("not mine"), so the ladder reads top to bottom and a new rule is one function in
one place. Nothing here touches the database or the clock: a test calls :func:`decide`
with a parsed mail and hand-made :class:`~mailgate.pipeline.facts.Facts`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from mailgate.config import Config
from mailgate.models import Status
from mailgate.pipeline import notify
from mailgate.pipeline.commands import check_commands, is_private, split_commands
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
from mailgate.pipeline.facts import Facts, TicketFacts
from mailgate.pipeline.filters import own_mail
from mailgate.pipeline.inputs import Hints, agent_text, mask_secrets, planned_ticket, reply_text
from mailgate.pipeline.reading import Mail, Unreadable
from mailgate.pipeline.threads import NO_REFERENCE, ThreadMatch, match_thread, status_after_reply
from mailgate.routing import Router, domain_of

NO_SENDER = "no sender address (From)"
RATE_LIMITED = "rate_limited"  # reason prefix: too many new tickets from one sender


class Case:
    """One mail with everything its decision may look at; the thread match is worked out
    once, when a stage first asks for it."""

    def __init__(self, mail: Mail, facts: Facts, router: Router, hints: Hints | None) -> None:
        self.mail = mail
        self.facts = facts
        self.router = router
        self.config: Config = router.config
        self.hints = hints

    @cached_property
    def match(self) -> ThreadMatch:
        facts = self.facts
        return match_thread(
            self.mail.sender, self.router.agents, facts.token, facts.references, facts.tag
        )

    @property
    def ticket(self) -> TicketFacts | None:
        return self.match.ticket


Stage = Callable[[Case], Decision | None]


def bounce(case: Case) -> Decision | None:
    """A delivery report for our mail: mark what it returns, suppress hard bounces."""
    report = case.mail.bounce
    if report is None:
        return None
    returned = case.facts.bounced  # the outbox rows whose Message-IDs the report names
    failed = ", ".join(f"{email} {status or '?'}" for email, status, _ in report.recipients)
    reason = f"bounce for {len(returned)} notification(s)" + (f": {failed}" if failed else "")
    suppress = tuple((email, status) for email, status, hard in report.recipients if hard)
    return Bounce(reason, returned, failed, suppress)


def no_sender(case: Case) -> Decision | None:
    return Quarantine(NO_SENDER) if not case.mail.sender else None


def own_loop(case: Case) -> Decision | None:
    """Our own notification coming back: answering it would start a mail loop."""
    loop = own_mail(case.mail.message, case.config)
    return Ignore(loop) if loop is not None else None


def report(case: Case) -> Decision | None:
    """A machine report (ARF, DMARC, TLS-RPT) is recorded as one and, by default, no ticket."""
    kind = case.mail.report
    if kind is None or case.config.hygiene.reports != "ignore":
        return None
    return Ignore(f"report ({kind})")


def not_acknowledged(mail: Mail) -> str:
    """The note a ticket's reason gets when its mail must not be answered, else ""."""
    return f"; not acknowledged: {mail.no_answer}" if mail.no_answer else ""


def reply(case: Case) -> Decision | None:
    """A mail that continues an open ticket becomes a comment on it."""
    ticket = case.ticket
    if ticket is None or ticket.status == Status.CLOSED:
        return None
    mail, config, router = case.mail, case.config, case.router
    by_agent = mail.sender in router.agents
    if by_agent:  # only agents' commands count; a customer's "#status solved" is text
        commands, text = split_commands(agent_text(mail, case.hints))
        body, secret = mask_secrets(text)
    else:
        commands = ()
        body, secret = reply_text(mail, case.hints)
    public = not (mail.auto_reply or is_private(commands))
    errors: tuple[str, ...] = ()
    if (
        commands
        and config.security.require_dkim_for_commands
        and not (mail.dkim is not None and mail.dkim.signed_by(mail.sender))
    ):
        # A forged From of an agent must not solve or move tickets.
        errors = tuple(
            f"{c.line}: refused: commands need a valid DKIM signature of "
            f"{domain_of(mail.sender)} (this mail: {mail.dkim or 'not checked'})"
            for c in commands
            if c.name not in ("note", "private")
        )
        commands = tuple(c for c in commands if c.name in ("note", "private"))
    changes, refused = check_commands(commands, router)
    errors += refused
    participants: tuple[tuple[str, str], ...] = ()
    if by_agent or mail.sender == ticket.requester:
        known = {ticket.requester, *ticket.participants}
        participants = tuple(
            (email, name)
            for email, name in notify.participant_addresses(mail.message, ticket.requester, config)
            if email not in known
        )
    requester = next((c.value for c in reversed(changes) if c.field == "requester"), None)
    audience = (
        requester or ticket.requester,
        *ticket.participants,
        *(email for email, _ in participants),
    )
    reason = case.match.reason
    if mail.auto_reply:
        reason += f"; auto-reply ({mail.auto_reply}) kept as internal note"
    kind = Comment if public else InternalNote
    return kind(
        reason=reason,
        ticket=ticket,
        author=mail.sender,
        author_name=mail.name,
        body=body,
        status=status_after_reply(ticket.status, by_agent, mail.auto_reply is not None),
        participants=participants,
        changes=changes,
        notify=notify.on_comment(
            mail.sender,
            by_agent,
            public,
            mail.auto_reply is not None,
            audience,
            tuple(router.agents),
            errors,
            secret,
        ),
    )


def follow_up(case: Case) -> Decision | None:
    """A reply to a closed ticket opens a new one; a robot's reply to it is dropped."""
    closed, mail = case.ticket, case.mail
    if closed is None or closed.status != Status.CLOSED:
        return None
    if mail.auto_reply:
        return Ignore(f"auto-reply ({mail.auto_reply}) to closed ticket #{closed.id}")
    body, secret = reply_text(mail, case.hints)
    answer = mail.no_answer is None
    return FollowUp(
        reason=f"follow-up of closed ticket #{closed.id}{not_acknowledged(mail)}",
        closed=closed,
        author=mail.sender,
        author_name=mail.name,
        body=body,
        notify=notify.on_new_ticket(
            closed.requester, closed.organization, mail.sender, answer, secret and answer
        ),
    )


def robot_to_no_ticket(case: Case) -> Decision | None:
    """Out-of-office notes and list mail never open a ticket (RFC 3834)."""
    if case.mail.auto_reply:
        return Ignore(f"auto-reply ({case.mail.auto_reply}) to no ticket")
    return None


def rate_limited(case: Case) -> Decision | None:
    """A sender opening more tickets an hour than ``[limits]`` allows waits in quarantine."""
    recent, limit = case.facts.recent_tickets, case.config.limits.tickets_per_hour
    if recent >= limit:
        return Quarantine(
            f"{RATE_LIMITED}: {recent} new tickets from {case.mail.sender} in the last hour"
        )
    return None


def new_ticket(case: Case) -> Decision:
    """Anything else opens a ticket in the organization routing chooses."""
    mail, config = case.mail, case.config
    plan = planned_ticket(case.router, mail, case.hints)
    reason = plan.reason
    if case.match.reason != NO_REFERENCE:
        reason += f"; {case.match.reason}"
    quiet = case.facts.recent_tickets >= config.limits.acks_per_hour
    if quiet:
        reason += f"; no acknowledgement (more than {config.limits.acks_per_hour} this hour)"
    reason += not_acknowledged(mail)
    answer = not quiet and mail.no_answer is None
    route = plan.decision
    return NewTicket(
        reason=reason,
        requester=plan.requester,
        requester_name=plan.name,
        organization=route.organization,
        subject=plan.subject,
        body=plan.body,
        score=route.score,
        priority=route.priority or "normal",
        tags=route.tags,
        participants=notify.participant_addresses(mail.message, plan.requester, config),
        notify=notify.on_new_ticket(
            plan.requester,
            route.organization,
            mail.sender,
            answer,
            plan.secret and mail.no_answer is None,
        ),
    )


# The ladder, first hit wins. Order matters: a bounce may have no usable sender; our own
# mail coming back must not thread onto its ticket; a report is no reply; a robot may
# comment but never opens.
STAGES: tuple[Stage, ...] = (
    bounce,
    no_sender,
    own_loop,
    report,
    reply,
    follow_up,
    robot_to_no_ticket,
    rate_limited,
    new_ticket,
)


def decide(
    mail: Mail | Unreadable, facts: Facts, router: Router, hints: Hints | None = None
) -> Decision:
    """What becomes of this mail, with the reason and the notifications it causes.

    ``router`` is the config compiled for routing (its ``config`` is the config);
    ``hints`` are inputs computed ahead for that config (see
    :mod:`mailgate.pipeline.inputs`), never a different answer.
    """
    if isinstance(mail, Unreadable):
        return Quarantine(mail.reason)
    case = Case(mail, facts, router, hints)
    for stage in STAGES:
        decision = stage(case)
        if decision is not None:
            return decision
    raise AssertionError("the last stage always decides")
