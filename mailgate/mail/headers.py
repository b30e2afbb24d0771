"""Header values to one clean line of text: unfolding, raw 8-bit bytes, RFC 2047 words.

mail-parser drops undecodable bytes and never tries Windows-1252, so header values are
decoded here from the raw items. Encoded words are decoded the way senders actually write
them (multi-byte characters split across words, padding missing, words glued to text), and
in linear time, so that a hostile header cannot cost quadratic work. The lenient base64
decoder serves mail-parser's attachment payloads too.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message
from typing import Any

from mailgate.mail.charsets import _clean, _decode_bytes, _unescape_bytes

_FOLD = re.compile(r"\r?\n[ \t]|\r[ \t]")
_NEWLINES = re.compile(r"[\r\n]+")
# The encoded text may hold a few stray "?" (invalid, but sent); bounding them keeps the
# scan linear: an unbounded ".*?" rescans to the end of the header for every "=?x?q?".
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([qQbB])\?([^?]*(?:\?(?!=)[^?]*){0,3})\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
# Every byte outside the base64 alphabet, deleted with bytes.translate (a regex took
# a tenth of the parse time of a mail with a 200 kB attachment).
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_B64_JUNK = bytes(b for b in range(256) if b not in _B64_ALPHABET)


def _decode_q(text: str) -> bytes:
    """RFC 2047 Q decoding, leaving malformed ``=`` escapes as they are."""
    raw = text.replace("_", " ").encode("ascii", "surrogateescape")
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _decode_b(text: str) -> bytes | None:
    """Lenient base64: senders drop padding or add junk; None when nothing is left."""
    raw = text.split("=", 1)[0].encode("ascii", "surrogateescape").translate(None, _B64_JUNK)
    if len(raw) % 4 == 1:
        raw = raw[:-1]
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw)
    except (binascii.Error, ValueError):
        return None


def _decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded words, also where senders break the rules.

    Adjacent encoded words in the same charset are joined *before* decoding, because
    mailers split multi-byte characters across words; whitespace between encoded words is
    dropped as RFC 2047 requires; encoded words glued to other text are decoded too.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(_decode_bytes(b"".join(pending), pending_charset))
        pending, pending_charset = [], None

    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        charset = match.group(1).split("*", 1)[0].lower()
        encoding = match.group(2).lower()
        decoded = _decode_q(match.group(3)) if encoding == "q" else _decode_b(match.group(3))
        if decoded is None:  # undecodable: keep the encoded word literally
            flush()
            out.append(between + match.group(0))
            pos = match.end()
            continue
        if between and not (pending and not between.strip()):
            flush()
            out.append(between)
        elif pending and charset != pending_charset:
            flush()
        pending.append(decoded)
        pending_charset = charset
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _unfold(text: str) -> str:
    """One line: folding whitespace becomes a single space, stray line breaks too."""
    if "\n" not in text and "\r" not in text:  # most values: two C searches, no regex
        return text
    return _NEWLINES.sub(" ", _FOLD.sub(" ", text))


def _decode_header(raw: Any, declared: str | None = None) -> str:
    """Unfold and decode one raw header value (8-bit bytes and RFC 2047) to clean text."""
    text = _unfold(raw if isinstance(raw, str) else str(raw))
    text = _unescape_bytes(text, declared)
    return _clean(_decode_encoded_words(text)).strip()


def _raw_headers(message: Message) -> list[tuple[str, str]]:
    """Header (name, raw value) pairs in order, as the parser saw them."""
    return [
        (str(name), value if isinstance(value, str) else str(value))
        for name, value in message.raw_items()
    ]
