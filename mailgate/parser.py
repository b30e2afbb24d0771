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
import mimetypes
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import mailparser
from mailparser.exceptions import MailParserRecursionError
from mailparser.utils import mime_header_view, ported_string

from mailgate.mail.charsets import _BAD_CHARS, _clean, _decode_bytes, _to_bytes, _unescape_bytes
from mailgate.mail.fields import Address, _addresses, _clean_id, _first_id, _id_list, _parse_date
from mailgate.mail.headblock import (
    UnparseableMessage,
    _header_block,
    _header_start,
    _repair_headers,
)
from mailgate.mail.headers import _decode_b, _decode_header, _raw_headers, _unfold
from mailgate.mail.htmltext import _html_to_text
from mailgate.newlines import as_lf


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment or inline part that is not the body text."""

    filename: str
    content_type: str
    content_id: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


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

_MAX_PARTS = 5000  # MIME parts examined for body and attachments
_MAX_DEPTH = 100  # MIME nesting examined; deeper parts are ignored with a defect
_MAX_DEFECTS = 50  # diagnostics are for humans; a flood of them helps nobody
_MAX_ENCODED_WORDS = 2000  # more in one header block: skip mail-parser (quadratic there)
_MAX_FILENAME = 255
_MP_LOOKAHEAD = 64  # mail-parser attachment items searched to pair one with its MIME part

_SYNTHETIC_DOMAIN = "mailgate.invalid"

# --------------------------------------------------------------------------------------
# MIME walk: body and attachments
# --------------------------------------------------------------------------------------

_MIME = mimetypes.MimeTypes()  # built-in table only: the same names on every host
_PATH_SEPARATORS = re.compile(r"[\\/]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True)
class _Walk:
    """What the MIME walk collected."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    named_texts: list[tuple[str, str]] = field(default_factory=list)  # (subtype, text)
    defects: list[str] = field(default_factory=list)


def _disposition(part: Message) -> str | None:
    """``inline``/``attachment``/... in lower case, or None (never raises)."""
    try:
        value = part.get_content_disposition()
    except Exception:
        return None
    return _unescape_bytes(value) if isinstance(value, str) else None


def _first_raw(part: Message, name: str) -> str | None:
    """The first raw value of a header in a part, or None."""
    wanted = name.lower()
    for key, value in part.raw_items():
        if str(key).strip().lower() == wanted:
            return value if isinstance(value, str) else str(value)
    return None


_MIME_TYPE = re.compile(r"\s*([a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+)")


def _content_type(part: Message) -> str:
    """The part's content type, lower-cased and clean (``text/plain`` when unreadable).

    Broken headers yield values like ``text/plain>`` or ``text/plain\n charset=x`` (a
    missing semicolon); the leading ``type/subtype`` token is what the sender meant.
    """
    try:
        value = str(part.get_content_type()).lower()
    except Exception:
        return "text/plain"
    match = _MIME_TYPE.match(value)
    return match.group(1) if match else "text/plain"


def _part_charset(part: Message) -> str | None:
    """The declared charset of a part, or None."""
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return _unescape_bytes(charset) if isinstance(charset, str) else None


def _payload_bytes(part: Message) -> bytes:
    """The transfer-decoded payload of a leaf part (base64, QP, uuencode handled)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return _to_bytes(raw)
    return b""


def _flatten(part: Message) -> bytes:
    """Serialise a (sub)message back to bytes, as faithfully as the parser allows."""
    try:
        return part.as_bytes()
    except Exception:
        pass
    try:
        return _to_bytes(part.as_string())
    except Exception:
        pass
    try:
        chunks = [f"{name}: {value}\n" for name, value in part.raw_items()]
        body = part.get_payload()
        if isinstance(body, str):
            chunks.append("\n" + body)
        return _to_bytes("".join(chunks))
    except Exception:
        return b""


def _filename_of(part: Message, declared: str | None) -> str | None:
    """The decoded filename of a part (RFC 2231 and RFC 2047 forms), or None.

    The parameters are read from a copy of the headers whose raw 8-bit bytes were decoded
    with the charset fallback first: the email package would turn them into U+FFFD.
    """
    view = Message()
    for key, value in part.raw_items():
        if str(key).strip().lower() in ("content-type", "content-disposition"):
            text = value if isinstance(value, str) else str(value)
            view[str(key).strip()] = _unescape_bytes(_unfold(text), declared)
    try:
        name = view.get_filename()
    except Exception:
        name = None
    if not isinstance(name, str) or not name.strip():
        return None
    return _decode_header(name) or None


def _safe_filename(name: str | None) -> str | None:
    """A filename without path parts or control characters, bounded in length."""
    if not name:
        return None
    name = _PATH_SEPARATORS.split(_clean(name))[-1]
    name = _CONTROL.sub("", name).strip().strip(".").strip()
    if not name:
        return None
    if len(name) > _MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: _MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            name = name[:_MAX_FILENAME]
    return name


def _fallback_filename(content_type: str, number: int, subject: str | None = None) -> str:
    """A stable name for an unnamed part: ``<subject>.eml`` or ``attachment-N.ext``."""
    if content_type in ("message/rfc822", "message/global"):
        base = _safe_filename(subject.replace(".", " ").strip() if subject else None)
        return f"{base[:120]}.eml" if base else f"message-{number}.eml"
    if content_type.startswith("message/") or content_type == "text/rfc822-headers":
        return f"{content_type.split('/', 1)[1]}-{number}.txt"
    extension = _MIME.guess_extension(content_type, strict=False) or ".bin"
    return f"attachment-{number}{extension}"


def _content_id(part: Message) -> str | None:
    """The Content-ID without angle brackets and whitespace, or None."""
    value = part.get("content-id")
    if value is None:
        return None
    cleaned = _clean_id(_decode_header(value))
    return cleaned or None


def _decode_text_part(part: Message) -> str:
    """Body text of a leaf part with charset fallback and normalised line endings."""
    return as_lf(_decode_bytes(_payload_bytes(part), _part_charset(part)))


def _mp_key(part: Message) -> tuple[str, str, str]:
    """How mail-parser describes a part in its attachment dicts (to pair the two up)."""
    metadata, _ = mime_header_view(part)
    return (
        ported_string(metadata.get_content_type()),
        ported_string(metadata.get("content-id")),
        ported_string(metadata.get("content-disposition")),
    )


def _mp_attachment_bytes(item: dict[str, Any]) -> bytes:
    """Decode a mail-parser attachment payload (base64 when ``binary``, else text)."""
    payload = item.get("payload") or ""
    if not isinstance(payload, str):
        return bytes(payload) if isinstance(payload, bytes | bytearray) else b""
    if item.get("binary"):
        return _decode_b(payload) or b""
    return _to_bytes(payload)


def _iter_parts(root: Message, walk: _Walk) -> Iterator[tuple[Message, int, bool]]:
    """Pre-order walk (the order of ``Message.walk``) without recursion, bounded.

    Yields (part, depth, inside) where ``inside`` marks parts within a ``message/*`` part
    or an attached container: they belong to that attachment, not to the body.
    """
    stack: list[tuple[Message, int, bool]] = [(root, 0, False)]
    count = 0
    while stack:
        part, depth, inside = stack.pop()
        count += 1
        if count > _MAX_PARTS:
            walk.defects.append(f"more than {_MAX_PARTS} MIME parts: the rest was ignored")
            return
        yield part, depth, inside
        if not part.is_multipart():
            continue
        if depth >= _MAX_DEPTH:
            walk.defects.append(f"MIME nesting deeper than {_MAX_DEPTH}: inner parts ignored")
            continue
        children = part.get_payload()
        if not isinstance(children, list):
            continue
        container_is_attachment = (
            _content_type(part).startswith("message/") or _disposition(part) == "attachment"
        )
        child_inside = inside or container_is_attachment
        stack.extend(
            (child, depth + 1, child_inside)
            for child in reversed(children)
            if isinstance(child, Message)
        )


def _walk_message(root: Message, mp: Any, declared: str | None) -> _Walk:
    """Select the body parts and the attachments of a parsed message.

    mail-parser's attachment list is consumed in walk order and paired with the parts it
    came from, so its filenames and payloads are used; every part is classified here so
    that no part is lost and forwarded messages stay out of the body.
    """
    walk = _Walk()
    pending: list[dict[str, Any]] = []
    if mp is not None:
        pending = [a for a in (getattr(mp, "attachments", None) or []) if isinstance(a, dict)]
    next_mp = 0

    unpaired: list[dict[str, Any]] = []

    def take_mp(part: Message) -> dict[str, Any] | None:
        """mail-parser's attachment for this part, if it made one (it goes in walk order)."""
        nonlocal next_mp
        if next_mp >= len(pending):
            return None
        try:
            key = _mp_key(part)
        except Exception:
            return None
        # Normally the next item matches. Look a little further when it does not (parts
        # this walk did not reach, e.g. beyond _MAX_DEPTH), so one gap cannot shift all.
        for index in range(next_mp, min(next_mp + _MP_LOOKAHEAD, len(pending))):
            item = pending[index]
            wanted = (
                str(item.get("mail_content_type") or ""),
                str(item.get("content-id") or ""),
                str(item.get("content-disposition") or ""),
            )
            if key == wanted:
                unpaired.extend(pending[next_mp:index])
                next_mp = index + 1
                return item
        return None

    def add_attachment(part: Message, ctype: str, data: bytes, name: str | None) -> None:
        number = len(walk.attachments) + 1
        inner_subject = None
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload(0) if part.is_multipart() else None
            if isinstance(inner, Message):
                inner_subject = _first_raw(inner, "subject")
                inner_subject = _decode_header(inner_subject, declared) if inner_subject else None
        filename = _safe_filename(name) or _fallback_filename(ctype, number, inner_subject)
        walk.attachments.append(
            Attachment(
                filename=filename, content_type=ctype, content_id=_content_id(part), data=data
            )
        )

    skip_below: int | None = None  # depth of a message/* part whose subtree is consumed
    for part, depth, inside in _iter_parts(root, walk):
        try:
            if skip_below is not None and depth <= skip_below:
                skip_below = None
            ctype = _content_type(part)
            is_container = part.is_multipart()
            item = None
            if not is_container or _disposition(part) == "attachment":
                item = take_mp(part)
            if skip_below is not None:  # inside an attached message: already in its bytes
                continue
            own_name = _filename_of(part, declared)
            if ctype.startswith("message/") or (is_container and item is not None):
                if ctype in ("message/rfc822", "message/global") or item is not None:
                    data = _mp_attachment_bytes(item) if item is not None else b""
                    if not data:
                        children = part.get_payload() if is_container else None
                        if isinstance(children, list) and children:
                            data = b"".join(_flatten(child) for child in children)
                        else:
                            data = _payload_bytes(part)
                else:  # delivery-status and friends: blocks of header fields
                    children = part.get_payload()
                    if isinstance(children, list):
                        data = b"\n".join(_flatten(child) for child in children)
                    else:
                        data = _payload_bytes(part)
                mp_name = str(item.get("filename") or "") if item is not None else ""
                add_attachment(part, ctype, data, _pick_name(mp_name, own_name))
                if is_container:
                    skip_below = depth
                continue
            if is_container:
                continue
            if item is not None:
                data = _mp_attachment_bytes(item)
                if not data:
                    data = _payload_bytes(part)
                mp_name = str(item.get("filename") or "")
                add_attachment(part, ctype, data, _pick_name(mp_name, own_name))
                disposition = _disposition(part)
                if not inside and ctype in ("text/plain", "text/html"):
                    if disposition == "inline":
                        _add_body(walk, ctype, _decode_text_part(part))
                    elif disposition is None:
                        walk.named_texts.append((ctype, _decode_text_part(part)))
                continue
            if inside:
                # only reachable without mail-parser pairing: a part of an attachment
                add_attachment(part, ctype, _payload_bytes(part), own_name)
                continue
            disposition = _disposition(part)
            if ctype in ("text/plain", "text/html") and disposition != "attachment":
                if own_name and mp is None:
                    add_attachment(part, ctype, _payload_bytes(part), own_name)
                    if disposition == "inline":
                        _add_body(walk, ctype, _decode_text_part(part))
                    elif disposition is None:
                        walk.named_texts.append((ctype, _decode_text_part(part)))
                else:
                    _add_body(walk, ctype, _decode_text_part(part))
            elif ctype.startswith("multipart/"):
                # a multipart without a usable boundary: its raw text is all there is
                _add_body(walk, "text/plain", _decode_text_part(part))
            else:
                add_attachment(part, ctype, _payload_bytes(part), own_name)
        except RecursionError:
            raise
        except Exception as exc:  # one broken part must not lose the rest of the mail
            walk.defects.append(f"part skipped: {type(exc).__name__}")
    # mail-parser items never paired with a part (e.g. parts it recovered from the epilogue)
    unpaired.extend(pending[next_mp:])
    if unpaired:
        walk.defects.append(f"{len(unpaired)} attachment(s) found only by mail-parser")
    for item in unpaired:
        ctype = str(item.get("mail_content_type") or "application/octet-stream").lower()
        filename = _safe_filename(_clean(str(item.get("filename") or "")))
        cid = _clean_id(_clean(str(item.get("content-id") or ""))) or None
        walk.attachments.append(
            Attachment(
                filename=filename or _fallback_filename(ctype, len(walk.attachments) + 1),
                content_type=_clean(ctype),
                content_id=cid,
                data=_mp_attachment_bytes(item),
            )
        )
    return walk


def _pick_name(mp_name: str, own_name: str | None) -> str | None:
    """Prefer mail-parser's decoded filename unless it lost characters on the way.

    mail-parser replaces undecodable bytes with U+FFFD, and invents a random name when there
    is none; the part's own (declared) name is the better source in both cases.
    """
    if not own_name:
        return None  # mail-parser's name was invented (content-id or random): use ours
    if mp_name and "\ufffd" not in mp_name and not _BAD_CHARS.search(mp_name):
        return _clean(mp_name)
    return own_name


def _add_body(walk: _Walk, ctype: str, text: str) -> None:
    """Record one body part (plain or HTML)."""
    if ctype == "text/html":
        walk.html.append(text)
    else:
        walk.plain.append(text)


def _body(walk: _Walk) -> tuple[str, str | None]:
    """Plain text and HTML of the body; HTML converted when there is no plain text."""
    plain = [text for text in walk.plain if text.strip()]
    html_parts = [text for text in walk.html if text.strip()]
    if not plain and not html_parts and walk.named_texts:
        # No unnamed body: a named text part that is not marked as attachment is the body
        # (Lotus Notes and some scanners name their only text part).
        for subtype, text in walk.named_texts:
            (html_parts if subtype == "text/html" else plain).append(text)
    html = "\n".join(html_parts).rstrip() if html_parts else None
    if plain:
        text = "\n\n".join(part.rstrip() for part in plain)
    elif html is not None:
        text = _html_to_text(html)
    else:
        text = ""
    return _clean(text.rstrip()), (_clean(html) if html is not None else None)


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
