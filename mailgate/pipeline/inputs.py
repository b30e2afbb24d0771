"""The config-dependent work on a mail's text that a decision needs, done at most once.

Routing a new ticket, cutting quoted history from a reply and masking credentials cost
more CPU than anything the database does for a mail. They need no database, so under
``serve`` a parser process does them ahead (:func:`prefetch`) and the single writer only
reads the results. Decide asks for them through :func:`planned_ticket`,
:func:`reply_text` and :func:`agent_text`, which use the prefetched value when there is
one and compute it otherwise: prefetching is a cache, never a second copy of a decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.parser import InboundMessage, UnparseableMessage, parse
from mailgate.pipeline.reading import NO_SUBJECT, Mail, shown_subject
from mailgate.pipeline.threads import names_a_ticket
from mailgate.pipeline.trust import Authentication, authentication
from mailgate.quotes import forwarded_original, strip_quoted
from mailgate.routing import RouteDecision, Router, normalize_subject
from mailgate.secrets_scan import MASK, find_secrets

Found = tuple[str, ...]  # the credentials a text held, in the order of their references


@dataclass(frozen=True, slots=True)
class TicketPlan:
    """What a new ticket from a mail would be, decided without the database."""

    requester: str  # lower-case; the forwarded customer when an agent forwards
    name: str
    decision: RouteDecision
    reason: str
    subject: str  # untagged, credentials masked, at most SUBJECT_LIMIT characters
    body: str  # credentials masked
    secret: bool  # subject or body held credentials
    secrets: Found = ()  # their values, subject's first, when the vault keeps them


@dataclass(frozen=True, slots=True)
class Hints:
    """Inputs computed ahead, valid for the config with this ``fingerprint`` only."""

    fingerprint: str
    plan: TicketPlan | None = None  # the ticket a mail that names none would open
    stripped: str | None = None  # a reply's text without quoted history
    reply: tuple[str, Found] | None = None  # that text with credentials masked, and them


def prefetch(router: Router, mail: Mail) -> Hints:
    """Compute ahead what decide will most likely ask for (CPU is the scarce resource).

    A mail that names a ticket (token-shaped recipient, a reference, a subject tag) is most
    likely a reply; any other will open a ticket if anything. Bounces and mail without a
    sender become neither. A guess that turns out wrong only costs the writer the work.
    """
    if mail.bounce is not None or not mail.sender:
        return Hints(router.fingerprint)
    message = mail.message
    references = (*message.in_reply_to, *message.references)
    if names_a_ticket(mail.recipients, references, mail.subject, router.config.tickets.tag_regex):
        stripped = strip_quoted(message.text)
        vault = router.config.secrets.vault
        return Hints(router.fingerprint, stripped=stripped, reply=masked(stripped, vault))
    return Hints(router.fingerprint, plan=ticket_plan(router, mail))


def usable(hints: Hints | None, router: Router) -> Hints | None:
    """The hints if they were computed with this router's config (a reload may fall between)."""
    if hints is None or hints.fingerprint != router.fingerprint:
        return None
    return hints


def planned_ticket(
    router: Router, mail: Mail, hints: Hints | None, auth: Authentication
) -> TicketPlan:
    """``auth`` is what decide worked out already: it is not worked out again."""
    if hints is not None and hints.plan is not None:
        return hints.plan
    return ticket_plan(router, mail, auth)


def reply_text(mail: Mail, hints: Hints | None, vault: bool) -> tuple[str, Found]:
    """A reply's new text, credentials masked, and the credentials."""
    if hints is not None and hints.reply is not None:
        return hints.reply
    return masked(strip_quoted(mail.message.text), vault)


def agent_text(mail: Mail, hints: Hints | None) -> str:
    """An agent's reply without quoted history, before its commands are split off."""
    if hints is not None and hints.stripped is not None:
        return hints.stripped
    return strip_quoted(mail.message.text)


def mask_secrets(text: str) -> tuple[str, bool]:
    """The text with credentials masked (the raw mail keeps the original), and whether any."""
    shown, found = masked(text, vault=False)
    return shown, bool(found)


def masked(text: str, vault: bool, first: int = 1) -> tuple[str, Found]:
    """The text with each credential masked, and the credentials found.

    With ``[secrets] vault`` the N-th value becomes ``[secret N]`` (counting from
    ``first``), which the vault keeps behind one-time links; else the mask hides it for good.
    The raw stored mail keeps the original either way.
    """
    findings = find_secrets(text)
    parts: list[str] = []
    pos = 0
    for number, finding in enumerate(findings, first):
        parts.append(text[pos : finding.start])
        parts.append(f"[secret {number}]" if vault else MASK)
        pos = finding.end
    parts.append(text[pos:])
    return "".join(parts), tuple(text[f.start : f.end] for f in findings)


def ticket_plan(router: Router, mail: Mail, auth: Authentication | None = None) -> TicketPlan:
    """Requester, organization, subject and body of the ticket this mail would open."""
    config = router.config
    requester, name, subject, note = mail.sender, mail.name, mail.subject, ""
    if auth is None:  # computed ahead in a parser process: decide has not asked yet
        auth = authentication(mail, config)
    if mail.sender in router.agents and auth.verdict is not None:
        original = forwarded_sender(mail.message)
        if original is not None and original[0] not in router.agents:
            # An agent forwarding a customer's mail opens the ticket for that customer.
            requester, name = original
            subject = normalize_subject(subject, config.tickets.tag_regex) or NO_SUBJECT
            note = f"; forwarded by agent {mail.sender}"
    decision: RouteDecision = (
        router.stranger(subject, auth.dmarc_fail)
        if auth.dmarc_fail is not None
        else router.route(requester, subject, mail.recipients)
    )
    # Another ticket's tag in a new ticket's subject would only confuse: it goes.
    untagged = " ".join(re.sub(config.tickets.tag_regex, " ", decision.subject or subject).split())
    # Masked whole, then cut: a credential straddling the cut is masked all the same.
    vault = config.secrets.vault
    subject_text, in_subject = masked(untagged or NO_SUBJECT, vault)
    body, in_body = masked(mail.message.text, vault, len(in_subject) + 1)
    return TicketPlan(
        requester=requester.lower(),
        name=name,
        decision=decision,
        reason=decision.reason + note,
        subject=shown_subject(subject_text),
        body=body,
        secret=bool(in_subject or in_body),
        secrets=(*in_subject, *in_body) if vault else (),
    )


def forwarded_sender(message: InboundMessage) -> tuple[str, str] | None:
    """The original sender of a forwarded mail: an attached message/rfc822, else inline."""
    for part in message.attachments:
        if part.content_type.lower() == "message/rfc822":
            try:
                inner = parse(part.data)
            except UnparseableMessage:
                continue
            if inner.from_ is not None and inner.from_.email:
                return inner.from_.email, inner.from_.name
    found = forwarded_original(message.text)
    if found is None:
        return None
    name, email = found
    return email, name
