"""Bytes to clean, storable text, whatever charset a mail claims.

Mail routinely lies about its charset (or names one Python does not know), and raw 8-bit
bytes turn up in headers where only ASCII is allowed. Every string the parser returns passes
through :func:`_clean`, and every byte string it decodes through :func:`_decode_bytes`, so
the charset guesses (the labels senders use mapped to what they mean, then UTF-8,
Windows-1252, Latin-1) and the one rule for storable text (no NUL, no lone surrogates:
PostgreSQL takes neither) live here.
"""

from __future__ import annotations

import codecs
import re

# PostgreSQL text rejects NUL, and lone surrogates cannot be encoded as UTF-8 at all.
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
# Runs of bytes the email package smuggled into str via the surrogateescape handler.
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
_ISO2022_ESCAPE = re.compile(rb"\x1b(?:\$[@AB(]|\([BJI])")

# Labels seen in the wild mapped to the codec that decodes what senders actually mean
# (WHATWG practice: Latin-1 labels carry Windows-1252, GB2312 labels carry GBK, ...).
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    "us-ascii": ("ascii",),  # 8-bit text labelled ASCII is usually UTF-8: the chain follows
    "ascii": ("ascii",),
    "iso-8859-1": ("cp1252", "latin-1"),
    "iso8859-1": ("cp1252", "latin-1"),
    "iso_8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "euc-cn": ("gb18030",),
    "big5": ("big5hkscs", "cp950"),
    "shift_jis": ("cp932", "shift_jis"),
    "shift-jis": ("cp932", "shift_jis"),
    "sjis": ("cp932", "shift_jis"),
    "x-sjis": ("cp932", "shift_jis"),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2"),
    "euc-kr": ("cp949",),
    "ks_c_5601-1987": ("cp949",),
    "ks_c_5601": ("cp949",),
    "iso-8859-8-i": ("iso-8859-8",),
    "windows-874": ("cp874",),
    "utf8": ("utf-8",),
    "unicode-1-1-utf-7": ("utf-7",),
    "x-unknown": (),
    "unknown": (),
    "unknown-8bit": (),
    "x-user-defined": (),
    "default": (),
}
_FALLBACK_CHARSETS = ("utf-8", "cp1252")


def _clean(text: str) -> str:
    """Replace NUL and lone surrogates with U+FFFD so every string is storable."""
    if text.isascii():  # no surrogates possible; a C search instead of the regex (hot path)
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _BAD_CHARS.sub("\ufffd", text)


def _charset_candidates(declared: str | None) -> list[str]:
    """Codecs to try for a declared charset label, best guess first."""
    if not declared:
        return []
    label = declared.strip().strip("\"'").strip().lower()
    if not label or len(label) > 40:
        return []
    if label in _CHARSET_ALIASES:
        return list(_CHARSET_ALIASES[label])
    if label.startswith(("windows-", "win-")) and label.split("-", 1)[1].isdigit():
        return ["cp" + label.split("-", 1)[1]]
    return [label]


def _is_text_codec(name: str) -> bool:
    """True for real text codecs; ``base64``, ``rot13`` or ``zlib`` labels are refused."""
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError, ValueError):
        return False
    return bool(getattr(info, "_is_text_encoding", True))


def _decode_bytes(data: bytes, declared: str | None = None, *, prefer_utf8: bool = False) -> str:
    """Decode bytes, never failing: declared charset → UTF-8 → Windows-1252 → Latin-1.

    Mail routinely lies about its charset (or names one Python does not know), so a strict
    decode with the label is only the first guess. ``prefer_utf8`` tries UTF-8 before the
    label: for raw 8-bit header bytes the label is only a hint borrowed from the body, and
    a strict UTF-8 decode practically never succeeds on text that is not UTF-8.
    """
    candidates: list[str] = []
    if _ISO2022_ESCAPE.search(data):
        candidates += ["iso2022_jp_2", "iso2022_jp_ext"]
    if prefer_utf8:
        candidates.append("utf-8")
    candidates += _charset_candidates(declared)
    candidates += _FALLBACK_CHARSETS
    seen: set[str] = set()
    for name in candidates:
        if name in seen:
            continue
        seen.add(name)
        if not _is_text_codec(name):
            continue
        try:
            return _clean(data.decode(name))
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
    return _clean(data.decode("latin-1", "replace"))


def _unescape_bytes(text: str, declared: str | None = None) -> str:
    """Decode raw 8-bit header bytes that the email package left as surrogate escapes."""
    if not _ESCAPED_BYTES.search(text):
        return _clean(text)

    def repl(match: re.Match[str]) -> str:
        raw = match.group(0).encode("ascii", "surrogateescape")
        return _decode_bytes(raw, declared, prefer_utf8=True)

    return _clean(_ESCAPED_BYTES.sub(repl, text))


def _to_bytes(text: str) -> bytes:
    """Encode a str that may carry surrogate-escaped raw bytes back to bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")
