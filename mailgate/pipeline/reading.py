"""What a mail says about itself, before any config or database is asked.

Who sent it, to whom, whether a robot wrote it, whether it is a bounce: every later stage
reads these from one :class:`Mail`, built once per mail (in a parser process under
``serve``), instead of asking the parsed message again.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.bounces import BounceReport, analyse_bounce, is_bounce
from mailgate.dkim_check import DkimResult
from mailgate.parser import InboundMessage
from mailgate.pipeline.answer import must_not_answer, report_kind
from mailgate.pipeline.filters import auto_reply_reason

NO_SUBJECT = "(no subject)"
# Subjects are stored and shown up to this many characters; the raw mail keeps the rest. A
# subject of a megabyte would otherwise be in every notification, list and log about it.
SUBJECT_LIMIT = 250


def shown_subject(subject: str) -> str:
    """The subject as a ticket stores it and a notification shows it: at most
    :data:`SUBJECT_LIMIT` characters, ending with "…" when it was cut."""
    if len(subject) <= SUBJECT_LIMIT:
        return subject
    return subject[: SUBJECT_LIMIT - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class InboundEnvelope:
    """The SMTP envelope: who handed the mail to us and for whom.

    ``mail_from`` is None when nobody said (``mailgate ingest`` without ``--mail-from``);
    "" is the null sender of ``MAIL FROM:<>``, which must never be answered (RFC 3834 §2).
    """

    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mail:
    """A parsed mail with the facts every stage needs."""

    message: InboundMessage
    envelope: InboundEnvelope
    sender: str  # lower-case; "" when the mail names no sender at all
    name: str
    recipients: tuple[str, ...]  # envelope recipients, then To and Cc
    auto_reply: str | None  # why a robot wrote it (RFC 3834 and friends), else None
    bounce: BounceReport | None = None  # a delivery report for mail we sent
    dkim: DkimResult | None = None
    no_answer: str | None = None  # why no automatic answer may go to the sender (RFC 3834)
    report: str | None = None  # the machine report it is (ARF, DMARC, TLS-RPT), else None

    @property
    def subject(self) -> str:
        return self.message.subject.strip() or NO_SUBJECT


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Input that is no mail at all: kept raw in quarantine with the reason."""

    reason: str


def requester_address(message: InboundMessage, envelope: InboundEnvelope) -> tuple[str, str] | None:
    """Who asks: the From header, else the envelope sender; None when there is neither."""
    if message.from_ is not None and message.from_.email:
        return message.from_.email, message.from_.name
    if envelope.mail_from is not None and "@" in envelope.mail_from:
        return envelope.mail_from.lower(), ""
    return None


def read(
    message: InboundMessage, envelope: InboundEnvelope, dkim: DkimResult | None = None
) -> Mail:
    """The :class:`Mail` of a parsed message; pure, and cheap next to parsing."""
    bounce = analyse_bounce(message) if is_bounce(message, envelope.mail_from or "") else None
    sender = requester_address(message, envelope) or ("", "")
    recipients = (*envelope.rcpt_to, *(a.email for a in (*message.to, *message.cc)))
    auto_reply = auto_reply_reason(message) if bounce is None else None
    no_answer = must_not_answer(message, envelope.mail_from)
    report = report_kind(message) if bounce is None else None
    return Mail(
        message,
        envelope,
        sender[0],
        sender[1],
        recipients,
        auto_reply,
        bounce,
        dkim,
        no_answer,
        report,
    )
