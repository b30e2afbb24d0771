"""Raw bytes → an immutable :class:`InboundMessage`.

Every later stage (filters, threading, routing, ingest) reads this one object, so the
parser is the only place that deals with MIME, charsets and header encodings. It never
raises for bad input: whatever can be decoded is, and what cannot is replaced.

mail-parser (``mailparser``) is the primary parser: it builds the MIME tree with a guard
against deep nesting, classifies attachments and supplies their names and payloads, parses
dates, recovers addresses from malformed headers (its ``get_addresses``) and reports MIME
defects. The stdlib ``email`` package and the helpers here fill the gaps where mail-parser is
lossy for a helpdesk:

* header text: mail-parser drops undecodable bytes (``errors="ignore"``), keeps raw 8-bit
  bytes as ``\\udcxx`` escapes in display names and never tries Windows-1252, so headers are
  decoded here from the raw items, and addresses are parsed from that decoded text;
* body text: mail-parser returns 7-bit ISO-2022-JP undecoded, falls back to UTF-8 only, and
  merges the bodies of forwarded ``message/rfc822`` parts into the main body, so body parts
  are selected and decoded here from mail-parser's MIME tree;
* parts mail-parser lists neither as attachment nor as body (unnamed non-text parts,
  ``message/*`` parts) become attachments, with stable fallback names instead of its random
  ones.

When mail-parser itself fails (other than for too-deep nesting) the same extraction runs on a
stdlib-only parse, so one library bug cannot lose a customer's mail. Hostile input is bounded
(header, part and nesting floods, encoded-word floods, pathological HTML): see the limits.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email
import email.message
import hashlib
import re
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
from mailgate.mail.mime import (
    Attachment,
    _body,
    _content_type,
    _iter_parts,
    _part_charset,
    _Walk,
    _walk_message,
)


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


def _build(raw: bytes, root: Message, mp: Any, notes: list[str]) -> InboundMessage:
    """Turn a parsed message tree (plus mail-parser's view when available) into the result."""
    declared = _declared_charset(root)
    raw_headers = _raw_headers(root)
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
        # mail-parser keeps the first value of a header: reused only when it is the only one
        parsed = getattr(mp, f"{name}_".replace("-", "_")) if len(values) == 1 and use_mp else None
        return _addresses(values[:1] if first_only else values, declared, use_mp, parsed)

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
        restored = _restore_large_parts(_parse_data(raw, skeleton, notes), data, aside)
        if restored is not None:
            return restored
    return _parse_data(raw, data, notes)


# A base64 attachment body at least this long is decoded straight from the raw bytes
# instead of going through the email package, which holds a mail about eight times over
# while parsing it (the text, its lines, the payload, the decoded bytes, mail-parser's
# copies; measured with bench/memory.py) and reads it a line at a time: a 200 kB
# attachment took 60% of the parse of its mail (bench/smtp_load.py's load).
_LARGE_PART = 32 << 10
_CTE_BASE64 = re.compile(rb"(?i)content-transfer-encoding:[ \t]*base64[ \t]*\r?(?=\n|\Z)")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_NON_TEXT_TYPE = re.compile(
    rb"(?im)^content-type:[ \t]*(?:application|image|audio|video|font|model)/"
)
_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/=\s]*")


def _base64_declarations(data: bytes) -> list[re.Match[bytes]]:
    """The lines "Content-Transfer-Encoding: base64", in order, any case of the field name.

    A regex anchored at every line start of a large mail cost a millisecond per 200 kB;
    this finds "base64" first. A spelling of it other than base64, Base64 and BASE64 is
    not found, and its part is parsed the ordinary way.
    """
    starts: set[int] = set()
    for needle in (b"ase64", b"ASE64"):
        at = data.find(needle)
        while at >= 0:
            starts.add(data.rfind(b"\n", 0, at) + 1)
            at = data.find(needle, at + 1)
    found = (_CTE_BASE64.match(data, start) for start in sorted(starts))
    return [match for match in found if match is not None]


def _set_aside_large_parts(data: bytes) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """The mail with each large base64 attachment body replaced by a small marker.

    Returns the skeleton and, per marker, (marker, start, end) of the body in ``data``.
    Only bodies that are certainly an attachment are set aside: a non-text Content-Type
    and base64 in the part's own header block, nothing but base64 up to the next boundary.
    """
    if len(data) < _LARGE_PART:
        return data, []
    pieces: list[bytes] = []
    aside: list[tuple[bytes, int, int]] = []
    pos = 0
    for match in _base64_declarations(data):
        if match.start() < pos:
            continue
        blank = _BLANK_LINE.search(data, match.end())
        if blank is None:
            break
        header_start = max(
            data.rfind(b"\n\n", 0, match.start()),
            data.rfind(b"\n\r\n", 0, match.start()),
            data.rfind(b"\n--", 0, match.start()),
            0,
        )
        if not _NON_TEXT_TYPE.search(data, header_start, blank.start()):
            continue
        body_start = blank.end()
        boundary = data.find(b"\n--", body_start)
        body_end = boundary + 1 if boundary >= 0 else len(data)
        if body_end - body_start < _LARGE_PART:
            continue
        if _BASE64_BODY.fullmatch(data, body_start, body_end) is None:
            continue
        marker = b"mailgate-large-part-%d-%s" % (
            len(aside),
            hashlib.sha256(data[:64]).hexdigest()[:16].encode(),
        )
        pieces += [data[pos:body_start], base64.b64encode(marker), b"\r\n"]
        aside.append((marker, body_start, body_end))
        pos = body_end
    if not aside:
        return data, []
    pieces.append(data[pos:])
    return b"".join(pieces), aside


def _restore_large_parts(
    message: InboundMessage, data: bytes, aside: list[tuple[bytes, int, int]]
) -> InboundMessage | None:
    """Put the set-aside bodies, decoded from ``data``, back as attachment contents.

    None when a marker did not come out as exactly one attachment (then the caller parses
    the whole mail the ordinary way: correctness before memory).
    """
    by_marker = {marker: (start, end) for marker, start, end in aside}
    found = [a for a in message.attachments if a.data in by_marker]
    if len(found) != len(aside) or len({a.data for a in found}) != len(aside):
        return None
    attachments = []
    for attachment in message.attachments:
        span = by_marker.get(attachment.data)
        if span is not None:
            try:
                # binascii reads the memoryview in place; base64.b64decode would copy it.
                content = binascii.a2b_base64(memoryview(data)[span[0] : span[1]])
            except (binascii.Error, ValueError):
                return None
            attachment = dataclasses.replace(attachment, data=content)
        attachments.append(attachment)
    return dataclasses.replace(message, attachments=tuple(attachments))


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
