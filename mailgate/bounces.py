"""Recognise bounces (non-delivery reports) and extract what they say.

A bounce that became a ticket would reopen the loop it reports: the agent's answer goes to
the mailer-daemon, which may bounce again. So ingest asks :func:`is_bounce` first, and
:func:`analyse_bounce` tells it which of mailgate's own notifications failed (by the
Message-ID embedded in the bounce) and which recipients must not be mailed again.

Both functions are pure: they only read an already parsed :class:`InboundMessage`, so they
can be tested on the real-world corpus without a database. Detection is deliberately
conservative about auto-replies (RFC 3834 vacation mail also arrives with a null envelope
sender) because swallowing a human's auto-reply is worse than letting an odd bounce through
to an agent, who can still close it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailgate.newlines import as_lf
from mailgate.parser import InboundMessage

__all__ = ["BounceReport", "analyse_bounce", "is_bounce"]

# Sender local parts that only ever send delivery reports.
_DAEMON_LOCALS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})
# Display names used by MTAs that send bounces from an otherwise ordinary address.
_DAEMON_NAMES = re.compile(
    r"mail delivery (?:system|subsystem)|mailer[- ]daemon|postmaster|mail administrator",
    re.IGNORECASE,
)
# Subjects of delivery failure notices, in the languages MTAs actually send. Auto-reply
# subjects ("Automatic reply", "Out of office") must never match.
_BOUNCE_SUBJECT = re.compile(
    r"undeliver(?:ed|able)|delivery status notification|failure notice|returned mail"
    r"|unzustellbar|nicht zustellbar|mail delivery failed|delivery fail|delivery has failed"
    r"|non[- ]?delivery|could not (?:be )?deliver|couldn't be delivered|not delivered"
    r"|delivery (?:problem|report|notification|error)|mail system error"
    r"|returned to sender|delayed mail|delivery delayed|message delayed|warning: could not send"
    r"|mail failure|rejected:? ?mail|bounce|unable to deliver|delivery unsuccessful"
    r"|no(?:n|t)-?remis|non recapitabile|no entregado|onbestelbaar",
    re.IGNORECASE,
)
_NULL_SENDERS = frozenset({"", "<>"})
_DSN_TYPE = re.compile(r"^\s*multipart/report\b.*\breport-type\s*=\s*\"?delivery-status\b", re.I)

_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers"}
)
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})

_ENHANCED = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_SMTP_CODE = re.compile(r"(?<![\d.#-])([45])[0-5]\d(?![\d.]*\d)(?=[\s-])")
_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ANGLE_ADDR_LINE = re.compile(r"^\s*<([^<>\s@]+@[^<>\s]+)>:?", re.MULTILINE)
_BODY_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*<?([^<>\s]+@[^<>\s]+?)>?\s*$", re.I | re.M)
# Phrases after which MTAs list the failed recipients (Exim, qmail, Sendmail, Exchange, ...).
_RECIPIENT_INTRO = re.compile(
    r"following (?:e-?mail )?(?:address(?:\(es\)|es)?|recipients?(?:\(s\))?)"
    r"|delivery to the following|could not be delivered to|couldn't be delivered to"
    r"|undeliverable to|failed recipient|unknown (?:user|recipient)|original-recipient"
    r"|final-recipient|an der folgenden|an folgende|error delivering your mail to"
    r"|delivery to .{0,40}? failed|delivery has failed to|was not delivered to",
    re.IGNORECASE,
)
# Where the copy of the original message starts: addresses below it are not recipients.
_COPY_START = re.compile(
    r"^-*\s*(?:below this line is a copy|this is a copy of|original message|the original message"
    r"|returned message|message headers follow|undelivered message|unsent message follows"
    r"|-+ ?original message ?-+)",
    re.IGNORECASE | re.MULTILINE,
)
_PERMANENT = re.compile(r"permanent(?:ly)? (?:error|failure|fatal)|given up|gave up", re.I)
_SEARCH_WINDOW = 1500  # characters after the recipient searched for its status code
_MAX_IDS = 20


@dataclass(frozen=True)
class BounceReport:
    """What a bounce reports, for marking deliveries bounced and suppressing addresses.

    ``message_ids`` are the Message-IDs (without angle brackets) of the original mail, so
    the bounce can be tied to the notification mailgate sent. ``recipients`` holds
    ``(address, status, hard)`` per failed recipient: ``status`` is the RFC 3463 code
    ("5.1.1") or "" when unknown, and ``hard`` says the failure is permanent, i.e. the
    address should be suppressed; delays (4.x.x) are reported but are never hard.
    """

    message_ids: tuple[str, ...]
    recipients: tuple[tuple[str, str, bool], ...]


def is_bounce(message: InboundMessage, mail_from: str) -> bool:
    """True when the message is a delivery failure report and must not become a ticket.

    ``mail_from`` is the SMTP envelope sender: bounces are sent with a null sender (RFC 5321
    section 4.5.5), but so are auto-replies, so a null sender alone is not enough.
    """
    content_type = message.header("Content-Type") or ""
    if _DSN_TYPE.search(content_type):
        return True
    subject_like = bool(_BOUNCE_SUBJECT.search(message.subject or ""))
    daemon = _is_daemon_sender(message)
    if mail_from.strip() in _NULL_SENDERS and (subject_like or daemon):
        return True
    return daemon and subject_like


def analyse_bounce(message: InboundMessage) -> BounceReport:
    """Extract the original Message-IDs and the failed recipients from a bounce."""
    return BounceReport(message_ids=_original_ids(message), recipients=_recipients(message))


# --------------------------------------------------------------------------------------
# Detection helpers
# --------------------------------------------------------------------------------------


def _is_daemon_sender(message: InboundMessage) -> bool:
    """From is a mailer daemon or postmaster, also when written without a domain."""
    sender = message.from_
    if sender is not None:
        local = sender.email.rsplit("@", 1)[0].strip().lower()
        if local in _DAEMON_LOCALS or _DAEMON_NAMES.search(sender.name or ""):
            return True
    raw = (message.header("From") or "").strip().strip("<>\"' ").lower()
    local = raw.rsplit("@", 1)[0] if "@" in raw else raw
    return local in _DAEMON_LOCALS


# --------------------------------------------------------------------------------------
# Original Message-IDs
# --------------------------------------------------------------------------------------


def _original_ids(message: InboundMessage) -> tuple[str, ...]:
    """Message-IDs from embedded original messages/headers, else from body text lines.

    The embedded part is authoritative (it is the original's header block); the body text
    is only searched when an MTA quoted the headers inline, as qmail and Exim do.
    """
    ids: list[str] = []
    for attachment in message.attachments:
        if attachment.content_type.lower() not in _ORIGINAL_TYPES:
            continue
        headers = BytesHeaderParser(policy=compat32).parsebytes(attachment.data.lstrip())
        value = headers.get("Message-ID")
        if value:
            _add_id(ids, str(value))
    if not ids:
        for match in _BODY_MESSAGE_ID.finditer(message.text or ""):
            _add_id(ids, match.group(1))
    return tuple(ids[:_MAX_IDS])


def _add_id(ids: list[str], value: str) -> None:
    """Append a Message-ID without brackets or whitespace, once."""
    match = re.search(r"<([^<>]+)>", value)
    cleaned = re.sub(r"\s+", "", match.group(1) if match else value).strip("<>")
    if cleaned and len(cleaned) <= 250 and cleaned not in ids:
        ids.append(cleaned)


# --------------------------------------------------------------------------------------
# Failed recipients
# --------------------------------------------------------------------------------------


def _recipients(message: InboundMessage) -> tuple[tuple[str, str, bool], ...]:
    """Failed recipients from the delivery-status part, else from the human-readable text."""
    found: list[tuple[str, str, bool]] = []
    for attachment in message.attachments:
        if attachment.content_type.lower() in _STATUS_TYPES:
            found.extend(_dsn_recipients(attachment.data))
    if found:
        return _dedupe(found)
    fallback = _text_recipient(message.text or "")
    return (fallback,) if fallback else ()


def _dedupe(items: list[tuple[str, str, bool]]) -> tuple[tuple[str, str, bool], ...]:
    """One entry per address, keeping the first report of it."""
    seen: set[str] = set()
    result: list[tuple[str, str, bool]] = []
    for item in items:
        if item[0] not in seen:
            seen.add(item[0])
            result.append(item)
    return tuple(result)


def _dsn_fields(block: str) -> dict[str, str]:
    """The fields of one delivery-status block (RFC 3464), unfolded, names lower-cased."""
    fields: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields.setdefault(name, value.strip())
    return fields


def _dsn_recipients(data: bytes) -> list[tuple[str, str, bool]]:
    """Per-recipient (address, status, hard) from a message/delivery-status body.

    Recipients whose Action is delivered, relayed or expanded did not fail and are skipped.
    """
    text = as_lf(data.decode("utf-8", "replace"))
    result: list[tuple[str, str, bool]] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields = _dsn_fields(block)
        recipient = fields.get("final-recipient") or fields.get("original-recipient")
        if not recipient:
            continue
        action = fields.get("action", "").split()[0].lower() if fields.get("action") else ""
        if action in ("delivered", "relayed", "expanded"):
            continue
        address = _EMAIL.search(recipient.partition(";")[2] or recipient)
        if not address:
            continue
        status = _enhanced(fields.get("status", ""))
        if not status:
            status = _enhanced(fields.get("diagnostic-code", ""))
        hard = _is_hard(status, fields.get("diagnostic-code", ""), action)
        result.append((address.group(0).lower(), status, hard))
    return result


def _enhanced(text: str) -> str:
    """The first RFC 3463 status code in the text, or ""."""
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else ""


def _is_hard(status: str, diagnostic: str, action: str) -> bool:
    """Permanent failure: a 5.x.x status, else a 5xx reply, else Action: failed."""
    if status:
        return status.startswith("5")
    code = _SMTP_CODE.search(diagnostic + " ")
    if code:
        return code.group(1) == "5"
    return action == "failed"


def _text_recipient(text: str) -> tuple[str, str, bool] | None:
    """The first failed recipient of a non-DSN bounce, read from its human-readable text.

    Only the part before the returned copy of the original is read, so the original's own
    From/To addresses are not mistaken for the failed recipient.
    """
    copy = _COPY_START.search(text)
    report = text[: copy.start()] if copy else text
    address: re.Match[str] | None = None
    intro = _RECIPIENT_INTRO.search(report)
    if intro:
        address = _EMAIL.search(report, intro.end())
    if address is None:
        address = _ANGLE_ADDR_LINE.search(report)
        if address is not None:
            address = _EMAIL.search(report, address.start())
    if address is None:
        return None
    window = report[address.end() : address.end() + _SEARCH_WINDOW]
    status = _enhanced(window)
    if status:
        return address.group(0).lower(), status, status.startswith("5")
    code = _SMTP_CODE.search(window + " ")
    if code:
        return address.group(0).lower(), "", code.group(1) == "5"
    return address.group(0).lower(), "", bool(_PERMANENT.search(report))
