"""Mail that must never be answered, and machine reports, decided in one place.

An acknowledgement to a mail that must not be answered is at best noise and at worst a
loop or a complaint: RFC 3834 section 2 forbids answering a null return path (bounces,
reports and many auto-replies use it), and answering a feedback loop (ARF, RFC 5965) or a
DMARC (RFC 7489) or TLS (RFC 8460) report mails a robot that counts complaints against the
support domain. Both functions are pure functions of the parsed message and the envelope
sender, so :func:`mailgate.pipeline.reading.read` computes them once per mail.
"""

from __future__ import annotations

import re

from mailgate.parser import InboundMessage
from mailgate.pipeline.filters import mailing_list, precedence

# What an envelope sender looks like when it is null: SMTP's "MAIL FROM:<>" (stored as
# "" or "<>") and Postfix pipe(8)'s ${sender}, which is "MAILER-DAEMON" for the null sender.
_NULL_SENDERS = frozenset({"", "<>", "mailer-daemon"})

# Local parts of addresses that only robots send from and nobody reads (RFC 3834 §2 lists
# the ones a responder should not answer; the no-reply family says so itself).
_ROBOT_LOCAL = re.compile(
    r"^(?:mailer-daemon|postmaster|bounce.*)$"
    r"|(?:^|[-_.+])(?:no-?reply|do-?not-?reply)(?:$|[-_.+])",
    re.IGNORECASE,
)

_REPORT_TYPE = re.compile(
    r"^\s*multipart/report\b.*\breport-type\s*=\s*\"?([a-z0-9-]+)", re.IGNORECASE | re.DOTALL
)
_FEEDBACK_TYPE = re.compile(r"^feedback-type:\s*([a-z0-9-]+)", re.IGNORECASE | re.MULTILINE)
# RFC 7489 §7.2.1.1: "Report Domain: example.com Submitter: … Report-ID: …"
_DMARC_SUBJECT = re.compile(r"\breport[ -]?domain:\s*\S", re.IGNORECASE)
_ARCHIVES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
    }
)
_TLSRPT_TYPES = frozenset({"application/tlsrpt+json", "application/tlsrpt+gzip"})

NULL_RETURN_PATH = "null return path (RFC 3834 §2)"


def is_null_sender(mail_from: str | None) -> bool:
    """The envelope sender is null (``MAIL FROM:<>``, or pipe(8)'s ``MAILER-DAEMON``);
    None, an envelope nobody told us, is not."""
    return mail_from is not None and mail_from.strip().lower() in _NULL_SENDERS


def report_kind(message: InboundMessage) -> str | None:
    """What machine report this mail is, as the ledger names it, else None.

    ARF feedback reports (RFC 5965), DMARC aggregate and failure reports (RFC 7489) and
    TLS-RPT reports (RFC 8460); delivery reports are bounces (mailgate.bounces).
    """
    content_type = message.header("Content-Type") or ""
    found = _REPORT_TYPE.search(content_type)
    report_type = found.group(1).lower() if found else ""
    if report_type == "feedback-report":
        feedback = ""
        for part in message.attachments:
            if part.content_type.lower() == "message/feedback-report":
                typed = _FEEDBACK_TYPE.search(part.data.decode("utf-8", "replace"))
                feedback = typed.group(1).lower() if typed else ""
                break
        if feedback == "auth-failure":
            return "DMARC failure report, RFC 7489"
        return f"ARF feedback report{f' {feedback}' if feedback else ''}, RFC 5965"
    if report_type == "tlsrpt" or any(
        part.content_type.lower() in _TLSRPT_TYPES for part in message.attachments
    ):
        return "TLS-RPT report, RFC 8460"
    if _DMARC_SUBJECT.search(message.subject) or _dmarc_archive(message):
        return "DMARC aggregate report, RFC 7489"
    return None


def _dmarc_archive(message: InboundMessage) -> bool:
    """A zip/gzip named as RFC 7489 §7.2.1.1 names aggregate reports, or from a dmarc robot."""
    sender = message.from_.email.lower() if message.from_ is not None else ""
    for part in message.attachments:
        name = part.filename.lower()
        archive = part.content_type.lower() in _ARCHIVES or name.endswith((".zip", ".xml.gz"))
        if archive and (name.count("!") >= 3 or "dmarc" in sender.partition("@")[0]):
            return True
    return False


def must_not_answer(message: InboundMessage, mail_from: str | None) -> str | None:
    """Why no automatic answer may go to this mail's sender (the first reason), else None.

    RFC 3834 §2: never answer a null return path, nor mailer daemons, nor mail that says
    it is list or bulk mail; the no-reply and bounce addresses say themselves that nobody
    reads them; machine reports (:func:`report_kind`) are read by robots only.
    """
    if is_null_sender(mail_from):
        return NULL_RETURN_PATH
    if (message.header("Return-Path") or "").strip() == "<>":
        return "null Return-Path (RFC 3834 §2)"
    sender = message.from_.email if message.from_ is not None else ""
    for address in ((mail_from or "").strip().strip("<>"), sender):
        local = address.rpartition("@")[0] if "@" in address else address
        if local and _ROBOT_LOCAL.search(local):
            return f"robot sender {address} (RFC 3834 §2)"
    for check in (mailing_list, precedence):  # the robot checks' own: one definition
        found = check(message)
        if found is not None:
            return f"{found} (RFC 3834 §2)"
    report = report_kind(message)
    if report is not None:
        return f"report ({report})"
    return None
