"""The MIME walk: which parts make the body and which are attachments.

mail-parser classifies attachments and decodes their names and payloads, but it merges the
bodies of forwarded messages into the main body, decodes text as UTF-8 only and gives
unnamed parts random names. So the MIME tree is walked here, without recursion and bounded
in parts and depth: mail-parser's attachments are paired with the parts they came from,
every other part is classified here so that none is lost, forwarded messages stay
attachments, and body text is decoded with the charset fallback.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from mailparser.utils import mime_header_view, ported_string

from mailgate.mail.charsets import _BAD_CHARS, _clean, _decode_bytes, _to_bytes, _unescape_bytes
from mailgate.mail.fields import _clean_id
from mailgate.mail.headers import _decode_b, _decode_header, _unfold
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


# Limits. They keep hostile input (part floods, deep nesting) to a bounded amount of work.
_MAX_PARTS = 5000  # MIME parts examined for body and attachments
_MAX_DEPTH = 100  # MIME nesting examined; deeper parts are ignored with a defect
_MAX_FILENAME = 255
_MP_LOOKAHEAD = 64  # mail-parser attachment items searched to pair one with its MIME part

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


def _flatten(part: Any) -> bytes:
    """Serialise a (sub)message back to bytes, as faithfully as the parser allows.

    ``part`` is what the email package hands out as a payload item: a Message, or for a
    broken mail something else, which the fallbacks below survive.
    """
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
