"""Structured header fields: Message-IDs, addresses and the date.

Deduplication and threading compare Message-IDs, so they are normalised one way here (no
brackets, no whitespace, bounded length). Addresses are parsed by RFC 5322's grammar
(``email.headerregistry``'s parser, which decodes encoded words only inside names) and
recovered from malformed headers by mail-parser's parser and the stdlib's, both blind to
what encoded words hide; the header text is decoded from 8-bit first so that display names
keep their characters, and names are put on one line. Dates become ISO 8601 UTC, or nothing.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from typing import Any

from mailparser.utils import get_addresses

from mailgate.mail.charsets import _clean, _unescape_bytes
from mailgate.mail.headers import _ENCODED_WORD, _decode_header, _unfold


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox as written in a header: display name and lower-cased address."""

    name: str
    email: str


_MAX_MESSAGE_ID = 250  # longer ids are junk and would not fit the database column


# --------------------------------------------------------------------------------------
# Message-IDs
# --------------------------------------------------------------------------------------

_ANGLE_ID = re.compile(r"<([^<>]*)>")
_WHITESPACE = re.compile(r"\s+")


def _clean_id(value: str) -> str:
    """A Message-ID without brackets and whitespace (''; when nothing usable is left)."""
    cleaned = _WHITESPACE.sub("", value).strip("<>")
    return cleaned if 0 < len(cleaned) <= _MAX_MESSAGE_ID else ""


def _first_id(value: str | None) -> str:
    """The Message-ID in a Message-ID header, tolerating comments and missing brackets."""
    if not value:
        return ""
    match = _ANGLE_ID.search(value)
    if match:
        return _clean_id(match.group(1))
    return _clean_id(value)


def _id_list(values: Iterable[str]) -> tuple[str, ...]:
    """Ids from In-Reply-To/References headers: in order, deduplicated, without brackets."""
    result: list[str] = []
    seen: set[str] = set()
    for value in values:
        found = _ANGLE_ID.findall(value)
        if not found:  # some mailers omit the brackets
            found = [token for token in value.split() if "@" in token]
        for candidate in found:
            cleaned = _clean_id(candidate)
            if cleaned and cleaned not in seen:
                seen.add(cleaned)
                result.append(cleaned)
    return tuple(result)


# --------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------

_VALID_EMAIL = re.compile(r'^(?:[^@\s<>()\[\],;:"]+|"[^"\r\n]+")@[^@\s<>()\[\],;:"]+$')
# Every character str.splitlines() breaks at, and TAB: none of them belongs in a name that
# is written into a header, a log line or a text column again.
_LINE_BREAKS = re.compile("[\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029]+")
# Encoded words stand in for placeholders while a fallback parser reads the structure.
_MASK = re.compile("\ue000([0-9]+)\ue001")


def _display_name(text: str) -> str:
    """A display name on one line: a name decoded from an encoded word may hold CR/LF
    (``=?utf-8?q?Evil=0D=0ABcc:...?=``), which must never reach a header we write."""
    return _LINE_BREAKS.sub(" ", text).strip()


def _make_address(name: Any, addr: Any, declared: str | None) -> Address | None:
    """Normalise one (display name, address) pair; None for an unusable address."""
    email_addr = _unescape_bytes(str(addr or ""), declared).strip().strip("<>").strip()
    email_addr = _clean(email_addr).lower()
    if not _VALID_EMAIL.match(email_addr):
        return None
    display = _display_name(_decode_header(str(name or ""), declared).strip().strip("\"'"))
    if display.lower() == email_addr:
        display = ""
    return Address(name=display, email=email_addr)


def _unique(addresses: Iterable[Address | None]) -> tuple[Address, ...]:
    """Drop invalid entries and repeated addresses, keeping the first spelling."""
    result: list[Address] = []
    seen: set[str] = set()
    for address in addresses:
        if address is not None and address.email not in seen:
            seen.add(address.email)
            result.append(address)
    return tuple(result)


# Nearly every address header is a few plain ``Name <local@domain>`` or ``local@domain``
# entries: no quotes, comments, encoded words or other specials, so a comma always ends an
# entry. For those this regex gives what the grammar gives (tests/test_parser.py holds the
# two to each other) in a tenth of its time, which was a third of a small mail's parse.
_DOT_ATOM = r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
_PLAIN_ENTRY = re.compile(
    rf"[ \t]*(?:(\w[\w.' -]*?)?[ \t]*<({_DOT_ATOM}@{_DOT_ATOM})>|({_DOT_ATOM}@{_DOT_ATOM}))[ \t]*"
)


def _plain_pairs(text: str) -> list[tuple[str, str]] | None:
    """The pairs of a header made of plain entries only; None for any other header."""
    pairs: list[tuple[str, str]] = []
    for entry in text.split(","):
        match = _PLAIN_ENTRY.fullmatch(entry)
        if match is None:
            return None
        name, bracketed, bare = match.groups()
        pairs.append((" ".join((name or "").split()), bracketed or bare))
    return pairs


def _rfc5322_pairs(text: str) -> list[tuple[str, str]] | None:
    """(name, address) pairs by RFC 5322's grammar as ``email.headerregistry`` reads it;
    None unless every entry is a valid mailbox.

    This parser reads an encoded word as one word of a phrase and decodes it there (RFC 2047
    section 5), so no text inside one, decoded or not, becomes an address; an address that
    is not written as such in the header (one it decoded) sends the header to the fallback.
    A name given only as a comment (``anna@example.com (Anna)``) is kept as the name.
    """
    try:
        address_list = AddressHeader.value_parser(text)
        mailboxes: list[Any] = address_list.all_mailboxes
    except Exception:  # its recovery has raised on hostile input before
        return None
    pairs: list[tuple[str, str]] = []
    written = _WHITESPACE.sub("", text)
    for mailbox in mailboxes:
        if mailbox.token_type != "mailbox":
            return None
        address = mailbox.addr_spec  # a property that walks the tree: read once
        if not address or address not in written:
            # not written there: it decoded an encoded word glued to the address
            # (``=?utf-8?q?x?=a@b``), where RFC 2047 section 5 allows none
            return None
        names = [token for token in mailbox if token.token_type == "name-addr"]
        display = (
            [token for token in names[0] if token.token_type == "display-name"] if names else []
        )
        name = _phrase(display[0]) if display else " ".join(mailbox.comments)
        pairs.append((name, address))
    return pairs or None


def _phrase(token: Any) -> str:
    """The text of a display name, without the whitespace between adjacent encoded words
    (RFC 2047 section 6.2), which the stdlib keeps: mailers split a name into many words."""
    out: list[str] = []
    space = ""
    after_word = False

    def walk(node: Any) -> None:
        nonlocal space, after_word
        kind = node.token_type
        if kind == "encoded-word":
            out.append(("" if after_word else space) + node.value)
            space, after_word = "", True
        elif kind in ("cfws", "fws", "comment"):
            space = " "
        elif isinstance(node, list):  # a token list
            for child in node:
                walk(child)
        elif node.isspace():  # a whitespace terminal
            space = " "
        else:  # a terminal: a word, a dot
            out.append(space + node.value)
            space, after_word = "", False

    walk(token)
    return "".join(out).strip()


def _masked(text: str) -> tuple[str, list[str]]:
    """The header with each encoded word replaced by a placeholder atom, and the words.

    The fallback parsers split at the commas, colons and brackets a sender may leave
    unencoded inside an encoded word: behind a placeholder they see one opaque word.
    """
    words: list[str] = []

    def hide(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"\ue000{len(words) - 1}\ue001"

    return _ENCODED_WORD.sub(hide, text), words


def _unmasked(text: str, words: list[str]) -> str:
    """Put the encoded words back where :func:`_masked` took them out."""
    if not words or "\ue000" not in text:
        return text
    return _MASK.sub(lambda m: words[int(m.group(1))] if int(m.group(1)) < len(words) else "", text)


def _fallback_pairs(text: str, use_mail_parser: bool) -> list[tuple[str, str]]:
    """(name, address) pairs of a header RFC 5322's grammar rejects, never raising:
    mail-parser's structural recovery, else the stdlib's lenient ``getaddresses``."""
    masked, words = _masked(text)
    pairs: list[tuple[Any, Any]] = []
    if use_mail_parser:
        try:
            found = get_addresses(masked, decode_names=True)
        except Exception:
            found = []
        pairs = [
            (p[0], p[1]) for p in found if isinstance(p, tuple | list) and len(p) == 2 and p[1]
        ]
    if not pairs:
        try:
            pairs = list(email.utils.getaddresses([masked]))
        except Exception:  # the stdlib address parser has raised on hostile input
            return []
    return [(_unmasked(str(name), words), _unmasked(str(addr), words)) for name, addr in pairs]


def _addresses(
    raw_values: list[str], declared: str | None, use_mail_parser: bool
) -> tuple[Address, ...]:
    """Addresses of one header, parsed once by RFC 5322's grammar, else recovered.

    Raw 8-bit bytes are decoded first: mail-parser would keep them as literal ``\\udcxx``
    escapes in display names. A header the grammar rejects (``Foo <foo@bar.com``, junk
    between addresses) is recovered by :func:`_fallback_pairs`. The address always comes
    from the structure of the header, never from a decoded name. Invalid entries are
    skipped, duplicates dropped.
    """
    found: list[Address | None] = []
    for raw in raw_values:
        text = _unescape_bytes(_unfold(raw), declared)
        pairs = _plain_pairs(text)
        if pairs is None:
            pairs = _rfc5322_pairs(text)
        if pairs is None:
            pairs = _fallback_pairs(text, use_mail_parser)
        found.extend(_make_address(name, addr, declared) for name, addr in pairs)
    result = _unique(found)
    if result or not use_mail_parser:
        return result
    return _addresses(raw_values, declared, use_mail_parser=False)


# --------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------


def _iso_utc(value: dt.datetime) -> str | None:
    """ISO 8601 in UTC with an explicit offset; naive values are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        value = value.astimezone(dt.UTC).replace(microsecond=0)
    except (OverflowError, ValueError):
        return None
    if not 1900 <= value.year <= 9999:
        return None
    return value.isoformat()


def _parse_date(mp: Any, raw: str | None) -> str | None:
    """mail-parser's strict date, else the stdlib's lenient one, else None."""
    if mp is not None:
        value = getattr(mp, "date", None)
        if isinstance(value, dt.datetime):
            iso = _iso_utc(value)
            if iso:
                return iso
    if not raw:
        return None
    try:
        parsed = email.utils.parsedate_tz(_unfold(raw))
        if parsed is None:
            return None
        stamp = email.utils.mktime_tz(parsed)
        return _iso_utc(dt.datetime.fromtimestamp(stamp, dt.UTC))
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
