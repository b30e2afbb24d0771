"""Structured header fields: Message-IDs, addresses and the date.

Deduplication and threading compare Message-IDs, so they are normalised one way here (no
brackets, no whitespace, bounded length). Addresses are recovered from malformed headers
with mail-parser's parser and the stdlib's as fallback, from header text decoded first so
that display names keep their 8-bit characters. Dates become ISO 8601 UTC, or nothing.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailparser.utils import get_addresses

from mailgate.mail.charsets import _clean, _unescape_bytes
from mailgate.mail.headers import _decode_header, _unfold


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


def _make_address(name: Any, addr: Any, declared: str | None) -> Address | None:
    """Normalise one (display name, address) pair; None for an unusable address."""
    email_addr = _unescape_bytes(str(addr or ""), declared).strip().strip("<>").strip()
    email_addr = _clean(email_addr).lower()
    if not _VALID_EMAIL.match(email_addr):
        return None
    display = _decode_header(str(name or ""), declared).strip().strip("\"'").strip()
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


def _address_pairs(text: str, use_mail_parser: bool) -> list[tuple[Any, Any]]:
    """(name, address) pairs of one decoded header value, never raising."""
    if use_mail_parser:
        try:
            pairs = get_addresses(text, decode_names=True)
        except Exception:
            pairs = []
        good = [(p[0], p[1]) for p in pairs if isinstance(p, tuple | list) and len(p) == 2 and p[1]]
        if good:
            return good
    try:
        return list(email.utils.getaddresses([text]))
    except Exception:  # the stdlib address parser has raised on hostile input
        return []


def _addresses(
    raw_values: list[str],
    declared: str | None,
    use_mail_parser: bool,
    parsed: list[tuple[str, str]] | None = None,
) -> tuple[Address, ...]:
    """Addresses of one header: mail-parser's structural recovery, else ``email.utils``.

    Raw 8-bit bytes are decoded first: mail-parser would keep them as literal ``\\udcxx``
    escapes in display names. Invalid entries are skipped, duplicates dropped.

    ``parsed`` is what mail-parser made of the header's only value while parsing the
    mail: the same call on the same text whenever that text needed no unfolding or
    decoding here, so it is used instead of parsing the header a second time (a tenth of
    a mail's parse).
    """
    found: list[Address | None] = []
    for raw in raw_values:
        text = _unescape_bytes(_unfold(raw), declared)
        if parsed and text == raw and _reusable(parsed):
            pairs = parsed
        else:
            pairs = _address_pairs(text, use_mail_parser)
        found.extend(_make_address(name, addr, declared) for name, addr in pairs)
    result = _unique(found)
    if result or not use_mail_parser:
        return result
    return _addresses(raw_values, declared, use_mail_parser=False)


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+")


def _reusable(parsed: list[tuple[str, str]]) -> bool:
    """Whether mail-parser's pairs give the addresses our own call would.

    mail-parser blanks a display name equal to its address, as :func:`_make_address`
    does; only for an address with quotes, encoded words or the like could the two
    differ, and then the header is parsed again.
    """
    return all(
        isinstance(name, str) and isinstance(addr, str) and (name or _PLAIN_ADDRESS.fullmatch(addr))
        for name, addr in parsed
    )


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
