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
from mailgate.emergency import Emergency, emergency, escalated, is_emergency
from mailgate.models import AuthorKind, NotificationKind, Status
from mailgate.pipeline import notify
from mailgate.pipeline.commands import (
    FIRST_ANSWER,
    Change,
    check_commands,
    is_private,
    split_commands,
)
from mailgate.pipeline.decision import (
    Bounce,
    Comment,
    Decision,
    FollowUp,
    Ignore,
    InternalNote,
    NewTicket,
    Notify,
    Quarantine,
)
from mailgate.pipeline.facts import Facts, TicketFacts
from mailgate.pipeline.filters import our_own_address, own_mail
from mailgate.pipeline.inputs import (
    Found,
    Hints,
    agent_text,
    mask_secrets,
    masked,
    planned_ticket,
    reply_text,
)
from mailgate.pipeline.reading import Mail, Unreadable
from mailgate.pipeline.threads import NO_REFERENCE, ThreadMatch, match_thread, status_after_reply
from mailgate.pipeline.trust import Authentication, authentication
from mailgate.routing import Router, domain_of

NO_SENDER = "no sender address (From)"
RATE_LIMITED = "rate_limited"  # reason prefix: too many new tickets from one sender
UNAUTHENTICATED = "unauthenticated agent mail"  # quarantine reason (contract)


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
    def auth(self) -> Authentication:
        """What authenticates the sender's domain (see :mod:`mailgate.pipeline.trust`)."""
        return authentication(self.mail, self.config)

    @property
    def by_agent(self) -> bool:
        """An agent's address in From, and the mail authenticated for its domain."""
        return self.mail.sender in self.router.agents and self.auth.verdict is not None

    @cached_property
    def match(self) -> ThreadMatch:
        facts, stranger = self.facts, self.auth.dmarc_fail
        if stranger is None:
            return match_thread(
                self.mail.sender, self.router.agents, facts.token, facts.references, facts.tag
            )
        # The From domain failed DMARC: the sender may be anyone, so only the unforgeable
        # reply token threads; a tag or a reference proves nothing.
        found = match_thread(self.mail.sender, frozenset(), facts.token, (), None)
        if found.ticket is None and (facts.references or facts.tag is not None):
            return ThreadMatch(None, "new", f"tag and references ignored: {stranger}")
        return found

    @property
    def ticket(self) -> TicketFacts | None:
        return self.match.ticket

    def emergency(self, text: str, known: str = "") -> Emergency | None:
        """The emergency the mail declares in its subject or the first line of ``text``
        (its own text). A subject that only repeats the ticket's (``known``) declares
        nothing new: a reply keeps "NOTFALL" in "Re: [#12] NOTFALL: …" by itself."""
        keywords = self.config.support.emergency_keywords
        subject = self.mail.subject
        if known and emergency(known, "", keywords) is not None:
            subject = ""
        return emergency(subject, text, keywords)

    @property
    def vault(self) -> bool:
        """``[secrets] vault``: credentials become ``[secret N]``, kept behind links."""
        return self.config.secrets.vault

    def kept(self, found: Found) -> Found:
        """The credentials the store encrypts: none without the vault (masked for good)."""
        return found if self.vault else ()

    def page(self, found: Emergency | None) -> tuple[Notify, ...]:
        """The page an emergency outside support hours sends (see :func:`notify.on_emergency`)."""
        config = self.config
        return notify.on_emergency(
            self.facts.support_open,
            config.support.paged(config.agents.notified),
            self.mail.sender,
            found is not None,
        )


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
    if loop is None and (ours := our_own_address(case.mail.sender, case.config)) is not None:
        loop = f"own mail (sender is {ours}), a loop"  # no From: the envelope's sender
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


def unverified_agent(case: Case) -> Decision | None:
    """An agent's address in From without authentication: it may be forged, so nothing of
    it reaches a customer and none of its commands is done. It is kept as an internal note
    on the ticket it names (else quarantined), and the agent address is told why."""
    mail = case.mail
    if mail.sender not in case.router.agents or case.by_agent or mail.auto_reply:
        return None
    ticket = case.ticket
    kept = (
        f"kept as an internal note on ticket {case.config.tickets.tag_for(ticket.id)}"
        if ticket is not None
        else "quarantined: it names no ticket"
    )
    notify = (
        Notify(
            NotificationKind.AGENT_UNVERIFIED,
            (mail.sender,),
            errors=(*case.auth.tried, kept),
            about=mail.subject,
            about_id=mail.message.message_id,
        ),
    )
    if ticket is None:
        return Quarantine(UNAUTHENTICATED, notify)
    body, found = masked(agent_text(mail, case.hints), case.vault)
    return InternalNote(
        reason=f"{case.match.reason}; {UNAUTHENTICATED}, {kept}",
        ticket=ticket,
        author=mail.sender,
        author_name=mail.name,
        body=body,
        status=ticket.status,
        participants=(),
        changes=(),
        notify=notify,
        author_kind=AuthorKind.UNVERIFIED_AGENT,
        secrets=case.kept(found),
    )


def agent_commands(case: Case) -> tuple[tuple[Change, ...], tuple[str, ...], str, bool, Found]:
    """An authenticated agent's mail: checked commands, refusals, masked text, whether it
    is public and the credentials it held."""
    mail, config = case.mail, case.config
    commands, text = split_commands(agent_text(mail, case.hints))
    body, secret = masked(text, case.vault)
    # Commands and nothing else are an action, not an answer: nothing to send the customer.
    public = not (mail.auto_reply or is_private(commands) or (commands and not body.strip()))
    if commands and not body.strip():
        # The internal note of such a mail shows what it asked for, not an empty comment.
        body = "\n".join(command.line for command in commands)
    errors: tuple[str, ...] = ()
    if (
        commands
        and config.security.require_dkim_for_commands
        and not (mail.dkim is not None and mail.dkim.signed_by(mail.sender))
    ):
        # Required on top of agent_auth: commands only from DKIM-signed mail.
        errors = tuple(
            f"{c.line}: refused: commands need a valid DKIM signature of "
            f"{domain_of(mail.sender)} (this mail: {mail.dkim or 'not checked'})"
            for c in commands
            if c.name not in ("note", "private")
        )
        commands = tuple(c for c in commands if c.name in ("note", "private"))
    changes, refused = check_commands(commands, case.router, mail.sender)
    # A refused line is quoted back to the agent: masked like every text that leaves.
    explained = tuple(mask_secrets(line)[0] for line in (*errors, *refused))
    return changes + first_answer(case, public, changes), explained, body, public, secret


def first_answer(case: Case, public: bool, changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """``[agents] assign_on_reply``: the first agent who answers an unassigned ticket
    publicly takes it, unless the answer's own ``#assign`` says otherwise."""
    ticket, config = case.ticket, case.config
    if (
        not public
        or not config.agents.assign_on_reply
        or ticket is None
        or ticket.assignee in config.agents.addresses
        or any(c.field == "assignee" for c in changes)
    ):
        return ()
    return (Change("assignee", case.mail.sender, FIRST_ANSWER),)


def new_requester(changes: tuple[Change, ...]) -> str | None:
    """The requester an agent's ``#requester`` sets, if any (the last one counts)."""
    return next((c.value for c in reversed(changes) if c.field == "requester"), None)


def reply(case: Case) -> Decision | None:
    """A mail that continues an open ticket becomes a comment on it."""
    ticket = case.ticket
    if ticket is None or ticket.status == Status.CLOSED:
        return None
    mail, config = case.mail, case.config
    by_agent = case.by_agent
    changes: tuple[Change, ...] = ()
    errors: tuple[str, ...] = ()
    if by_agent:  # only agents' commands count; a customer's "#status solved" is text
        changes, errors, body, public, secret = agent_commands(case)
    else:
        body, secret = reply_text(mail, case.hints, case.vault)
        public = not mail.auto_reply
    # A customer's reply may declare an emergency (the out-of-hours acknowledgement says
    # so); on a ticket that already is one it changes nothing and pages nobody again.
    found = (
        case.emergency(body, ticket.subject)
        if public and not by_agent and not is_emergency(ticket.tags)
        else None
    )
    participants: tuple[tuple[str, str], ...] = ()
    if by_agent or mail.sender == ticket.requester:
        known = {ticket.requester, *ticket.participants, *ticket.inactive}
        participants = tuple(
            (email, name)
            for email, name in notify.participant_addresses(mail.message, ticket.requester, config)
            if email not in known
        )
    audience = notify.reply_audience(
        new_requester(changes) or ticket.requester,
        (*ticket.participants, *(email for email, _ in participants)),
        changes,
    )
    reason = case.match.reason
    if mail.auto_reply:
        reason += f"; auto-reply ({mail.auto_reply}) kept as internal note"
    if found is not None:
        reason += f"; {found}"
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
        notify=case.page(found)
        + notify.on_comment(
            mail.sender,
            by_agent,
            public,
            mail.auto_reply is not None,
            audience,
            notify.owners(ticket.assignee, config),
            errors,
            bool(secret),
        ),
        author_kind=AuthorKind.AGENT if by_agent else AuthorKind.CUSTOMER,
        authentication=case.auth.verdict,
        emergency=found is not None,
        secrets=case.kept(secret),
    )


def follow_up(case: Case) -> Decision | None:
    """A reply to a closed ticket opens a new one; a robot's reply to it is dropped."""
    closed, mail = case.ticket, case.mail
    if closed is None or closed.status != Status.CLOSED:
        return None
    if mail.auto_reply:
        return Ignore(f"auto-reply ({mail.auto_reply}) to closed ticket #{closed.id}")
    reason = f"follow-up of closed ticket #{closed.id}"
    if case.by_agent:
        # Opened by the agent's answer: no acknowledgement, the customer gets the answer.
        changes, errors, body, public, secret = agent_commands(case)
        audience = notify.reply_audience(
            new_requester(changes) or closed.requester, closed.participants, changes
        )
        return FollowUp(
            reason=f"{reason}, opened by agent {mail.sender}",
            closed=closed,
            author=mail.sender,
            author_name=mail.name,
            body=body,
            notify=notify.on_comment(
                mail.sender,
                True,
                public,
                False,
                audience,
                case.config.agents.notified,
                errors,
                bool(secret),
            ),
            author_kind=AuthorKind.AGENT,
            authentication=case.auth.verdict,
            public=public,
            status=status_after_reply(Status.NEW.value, True, False),
            changes=changes,
            secrets=case.kept(secret),
        )
    body, secret = reply_text(mail, case.hints, case.vault)
    answer = mail.no_answer is None
    # A new ticket: an emergency declared now pages, even when the closed one was one too.
    found = case.emergency(body, closed.subject)
    if found is not None:
        reason += f"; {found}"
    page = case.page(found)
    return FollowUp(
        reason=f"{reason}{not_acknowledged(mail)}",
        closed=closed,
        author=mail.sender,
        author_name=mail.name,
        body=body,
        emergency=found is not None,
        notify=page
        + notify.on_new_ticket(
            closed.requester,
            closed.organization,
            mail.sender,
            answer,
            bool(secret) and answer,
            # The team, and the closed ticket's assignee, who keeps the follow-up.
            tuple(dict.fromkeys((*case.config.agents.notified, *closed_owner(case, closed)))),
            paged=bool(page),
        ),
        authentication=case.auth.verdict,
        secrets=case.kept(secret),
    )


def closed_owner(case: Case, closed: TicketFacts) -> tuple[str, ...]:
    owner = closed.assignee
    return (owner,) if owner is not None and owner in case.router.agents else ()


def agent_without_ticket(case: Case) -> Decision | None:
    """An agent's own mail that names no ticket and forwards no customer's mail: ours,
    never a ticket nor acknowledged (a ticket asked by ourselves helps nobody)."""
    mail = case.mail
    if not case.by_agent or mail.auto_reply:
        return None
    plan = planned_ticket(case.router, mail, case.hints, case.auth)
    if plan.requester != mail.sender:
        return None  # a forwarded customer's mail: the ticket is the customer's
    return Ignore(f"own mail (agent {mail.sender}) names no ticket, a loop")


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
    plan = planned_ticket(case.router, mail, case.hints, case.auth)
    reason = plan.reason
    if case.match.reason != NO_REFERENCE:
        reason += f"; {case.match.reason}"
    quiet = case.facts.recent_tickets >= config.limits.acks_per_hour
    if quiet:
        reason += f"; no acknowledgement (more than {config.limits.acks_per_hour} this hour)"
    route = plan.decision
    priority, tags = route.priority or "normal", route.tags
    found = case.emergency(plan.body)
    if found is not None:
        priority, tags = escalated(tags)
        reason += f"; {found}"
    reason += not_acknowledged(mail)
    answer = not quiet and mail.no_answer is None
    page = case.page(found)
    return NewTicket(
        authentication=case.auth.verdict,
        reason=reason,
        requester=plan.requester,
        requester_name=plan.name,
        organization=route.organization,
        subject=plan.subject,
        body=plan.body,
        score=route.score,
        priority=priority,
        tags=tags,
        participants=notify.participant_addresses(mail.message, plan.requester, config),
        # The page first: its outbox row is queued, and so sent, before the others.
        notify=page
        + notify.on_new_ticket(
            plan.requester,
            route.organization,
            mail.sender,
            answer,
            plan.secret and mail.no_answer is None,
            config.agents.notified,
            route.unused_prefix,
            paged=bool(page),
        ),
        secrets=plan.secrets,
    )


# The ladder, first hit wins. Order matters: a bounce may have no usable sender; our own
# mail coming back must not thread onto its ticket; a report is no reply; an agent's mail
# that is not authenticated never reaches a reply; a robot may comment but never opens.
STAGES: tuple[Stage, ...] = (
    bounce,
    no_sender,
    own_loop,
    report,
    unverified_agent,
    reply,
    follow_up,
    agent_without_ticket,
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
