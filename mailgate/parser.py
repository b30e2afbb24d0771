"""Raw bytes → an immutable :class:`InboundMessage`.

Every later stage (filters, threading, routing, ingest) reads this one object, so the
parser is the only place that deals with MIME, charsets and header encodings. It never
raises for bad input: whatever can be decoded is, and what cannot is replaced.

mail-parser (``mailparser``) is the primary parser: it builds the MIME tree with a guard
against deep nesting, classifies attachments and supplies their names and payloads, parses
dates, recovers addresses from malformed headers (its ``get_addresses``) and reports MIME
defects. The stdlib ``email`` package and the modules of :mod:`mailgate.mail` fill the gaps
where mail-parser is lossy for a helpdesk:

* header text: mail-parser drops undecodable bytes (``errors="ignore"``), keeps raw 8-bit
  bytes as ``\\udcxx`` escapes in display names and never tries Windows-1252, so headers are
  decoded here from the raw items, and addresses are parsed from that text (8-bit bytes
  decoded, encoded words not) by RFC 5322's grammar first, see :mod:`mailgate.mail.fields`;
* body text: mail-parser returns 7-bit ISO-2022-JP undecoded, falls back to UTF-8 only, and
  merges the bodies of forwarded ``message/rfc822`` parts into the main body, so body parts
  are selected and decoded here from mail-parser's MIME tree;
* parts mail-parser lists neither as attachment nor as body (unnamed non-text parts,
  ``message/*`` parts) become attachments, with stable fallback names instead of its random
  ones.

When mail-parser itself fails (other than for too-deep nesting) the same extraction runs on a
stdlib-only parse, so one library bug cannot lose a customer's mail. Hostile input is bounded
(header, part and nesting floods, encoded-word floods, pathological HTML): see the ``_MAX_*``
limits here and in each module.

This module keeps the entry point and the result: :func:`parse`, the order of its steps, the
assembly of :class:`InboundMessage` and its defects. Each step lives in :mod:`mailgate.mail`:
``headblock`` (where the headers start, their repair), ``large`` (big base64 attachments
decoded beside the parse), ``charsets`` and ``headers`` (text and header values), ``fields``
(Message-IDs, addresses, dates), ``mime`` (body and attachments), ``htmltext`` and ``tnef``
(the files inside Outlook's ``winmail.dat``, added beside it).
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import mailparser
from mailparser.exceptions import MailParserRecursionError

from mailgate.mail.charsets import _clean, _unescape_bytes
from mailgate.mail.fields import Address, _addresses, _first_id, _id_list, _parse_date
from mailgate.mail.headblock import (
    UnparseableMessage,
    _header_block,
    _header_start,
    _repair_headers,
)
from mailgate.mail.headers import _decode_header, _raw_headers
from mailgate.mail.large import _restore_large_parts, _set_aside_large_parts
from mailgate.mail.mime import (
    Attachment,
    _body,
    _content_type,
    _iter_parts,
    _part_charset,
    _Walk,
    _walk_message,
)
from mailgate.mail.tnef import unpack_all

__all__ = [
    "Address",
    "Attachment",
    "InboundMessage",
    "UnparseableMessage",
    "parse",
    "synthesized_message_id",
]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What mailgate knows about one received mail, decoded and normalised."""

    message_id: str  # without angle brackets; synthesised from the raw bytes when missing
    message_id_synthesized: bool
    subject: str
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    in_reply_to: tuple[str, ...]  # Message-IDs without angle brackets
    references: tuple[str, ...]
    date: str | None  # ISO 8601 UTC, when the Date header could be read
    text: str  # the body as plain text (HTML-only mail converted)
    html: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]  # every header, decoded, in order
    defects: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively; None when absent."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


# --------------------------------------------------------------------------------------
# Limits. They keep hostile input (header floods, part floods) to a bounded amount of work.
# --------------------------------------------------------------------------------------

_MAX_DEFECTS = 50  # diagnostics are for humans; a flood of them helps nobody
_MAX_ENCODED_WORDS = 2000  # more in one header block: skip mail-parser (quadratic there)
# Raw characters read of a Subject: a hundred times what a ticket keeps (250), and what the
# robot checks, routing and threading can scan in a millisecond. A 1 MB folded Subject cost
# every one of them a second; the raw mail keeps all of it.
_MAX_SUBJECT = 16 * 1024

_SYNTHETIC_DOMAIN = "mailgate.invalid"

# --------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------


def _mp_defects(mp: Any) -> list[str]:
    """Short defect strings from mail-parser's defect records ("Class in where")."""
    result: list[str] = []
    for record in getattr(mp, "defects", None) or []:
        if not isinstance(record, dict):
            continue
        for where, entries in record.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                name = str(entry).split(":", 1)[0].strip()
                result.append(f"{name} in {where}")
    if not result:
        result.extend(sorted(str(c) for c in getattr(mp, "defects_categories", None) or ()))
    return result


def _stdlib_defects(root: Message) -> list[str]:
    """Short defect strings from the email package's per-part defect lists."""
    result: list[str] = []
    for part, _depth, _inside in _iter_parts(root, _Walk()):
        for defect in getattr(part, "defects", None) or []:
            result.append(f"{type(defect).__name__} in {_content_type(part)}")
    return result


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    """Unique, clean, bounded list of diagnostics in first-seen order."""
    result: list[str] = []
    for item in items:
        cleaned = _clean(item)[:200]
        if cleaned and cleaned not in result:
            result.append(cleaned)
        if len(result) >= _MAX_DEFECTS:
            break
    return tuple(result)


# --------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------


def _declared_charset(root: Message) -> str | None:
    """The charset the message declares (top level or first text part): a hint for
    raw 8-bit headers, which carry no charset of their own."""
    for part, _depth, _inside in _iter_parts(root, _Walk()):
        charset = _part_charset(part)
        if charset and charset not in ("us-ascii", "ascii", "utf-8", "utf8"):
            return charset
        if charset:
            return None
    return None


def _cut_subject(value: str) -> str:
    """The first :data:`_MAX_SUBJECT` characters of a raw Subject, cut at whitespace so no
    encoded-word (RFC 2047) is cut in half; words are separated by whitespace there."""
    if len(value) <= _MAX_SUBJECT:
        return value
    head = value[:_MAX_SUBJECT]
    cut = max(head.rfind(" "), head.rfind("\t"), head.rfind("\n"))
    return head[:cut] if cut > 0 else head


def _build(raw: bytes, root: Message, mp: Any, notes: list[str]) -> InboundMessage:
    """Turn a parsed message tree (plus mail-parser's view when available) into the result."""
    declared = _declared_charset(root)
    raw_headers = [
        (name, _cut_subject(value) if name.strip().lower() == "subject" else value)
        for name, value in _raw_headers(root)
    ]
    headers = tuple(
        (_clean(_unescape_bytes(name)).strip(), _decode_header(value, declared))
        for name, value in raw_headers
    )
    by_name: dict[str, list[str]] = {}
    for name, value in raw_headers:
        by_name.setdefault(name.strip().lower(), []).append(value)

    def first(name: str) -> str | None:
        values = by_name.get(name)
        return values[0] if values else None

    subject_raw = first("subject")
    subject = _decode_header(subject_raw, declared) if subject_raw is not None else ""

    message_id = _first_id(_decode_header(first("message-id") or "", declared))
    synthesized = not message_id
    if synthesized:
        message_id = synthesized_message_id(raw)

    use_mp = mp is not None

    def addresses(name: str, first_only: bool = False) -> tuple[Address, ...]:
        values = by_name.get(name, [])
        return _addresses(values[:1] if first_only else values, declared, use_mp)

    senders = addresses("from", first_only=True)
    walk = _walk_message(root, mp, declared)
    text, html = _body(walk)

    defects = list(notes)
    defects += _mp_defects(mp) if mp is not None else _stdlib_defects(root)
    defects += walk.defects

    return InboundMessage(
        message_id=_clean(message_id),
        message_id_synthesized=synthesized,
        subject=subject,
        from_=senders[0] if senders else None,
        to=addresses("to"),
        cc=addresses("cc"),
        reply_to=addresses("reply-to"),
        in_reply_to=_id_list(_decode_header(v, declared) for v in by_name.get("in-reply-to", [])),
        references=_id_list(_decode_header(v, declared) for v in by_name.get("references", [])),
        date=_parse_date(mp, first("date")),
        text=text,
        html=html,
        attachments=tuple(walk.attachments),
        headers=headers,
        defects=_dedupe(defects),
    )


def _stdlib_parse(raw: bytes, data: bytes, notes: list[str]) -> InboundMessage:
    """Parse with the email package alone (used when mail-parser fails)."""
    root = email.message_from_bytes(data)
    return _build(raw, root, None, notes)


def synthesized_message_id(raw: bytes) -> str:
    """A stable Message-ID for mail that has none, so a redelivery is still a duplicate."""
    return f"{hashlib.sha256(raw).hexdigest()[:32]}@{_SYNTHETIC_DOMAIN}"


def parse(raw: bytes) -> InboundMessage:
    """Parse raw RFC 5322 bytes; raise :class:`UnparseableMessage` only for non-mail."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"parse() needs bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    data, notes = _header_start(raw)
    data, repairs = _repair_headers(data)
    notes += repairs
    skeleton, aside = _set_aside_large_parts(data)
    if aside:
        message = _parse_data(raw, skeleton, notes)
        attachments = _restore_large_parts(message.attachments, data, aside)
        if attachments is not None:
            return _unpack_tnef(dataclasses.replace(message, attachments=attachments))
    return _unpack_tnef(_parse_data(raw, data, notes))


def _unpack_tnef(message: InboundMessage) -> InboundMessage:
    """The files of each Outlook ``winmail.dat`` added after it (:mod:`mailgate.mail.tnef`);
    one that cannot be unpacked stays as it is, with a defect saying why."""
    attachments, problems = unpack_all(message.attachments)
    if attachments is message.attachments and not problems:
        return message
    defects = _dedupe((*message.defects, *problems))
    return dataclasses.replace(message, attachments=attachments, defects=defects)


def _parse_data(raw: bytes, data: bytes, notes: list[str]) -> InboundMessage:
    """Parse the repaired bytes, with mail-parser and else the email package alone."""
    encoded_words = _header_block(data).count(b"=?")
    if encoded_words > _MAX_ENCODED_WORDS:
        # the stdlib decode_header that mail-parser runs is quadratic in this count
        notes.append(f"{encoded_words} encoded words in the headers: parsed without mail-parser")
        return _stdlib_parse(raw, data, notes)
    try:
        mp = mailparser.parse_from_bytes(data)
        return _build(raw, mp.message, mp, notes)
    except (MailParserRecursionError, RecursionError) as exc:
        raise UnparseableMessage("MIME structure nested too deeply to parse") from exc
    except Exception as exc:  # any library bug: retry with the stdlib alone
        notes = [*notes, f"mail-parser failed ({type(exc).__name__}); parsed with stdlib"]
        try:
            return _stdlib_parse(raw, data, notes)
        except RecursionError as inner:
            raise UnparseableMessage("MIME structure nested too deeply to parse") from inner
        except Exception as inner:
            raise UnparseableMessage(
                f"unreadable message: {type(exc).__name__}: {exc}; "
                f"stdlib: {type(inner).__name__}: {inner}"
            ) from inner
