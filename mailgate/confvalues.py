"""Checks for single config values, each turning TOML into a typed value or one clear error.

:func:`mailgate.config.parse_config` reads every section through a :class:`_Section`; the
checks live here so the config's dataclasses and its parsing stay readable in one file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from mailgate.errors import ConfigError

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$|^localhost$"
)


_ISO_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)


def parse_duration(value: str) -> timedelta:
    """``"3d"``, ``"72h"``, ``"90m"``, ``"30s"``, ``"1w"`` or ISO 8601 ``"P3D"`` → timedelta."""
    match = _DURATION.match(value)
    if match:
        return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])
    iso = _ISO_DURATION.match(value.strip().upper())
    if iso and value.strip().upper() not in ("P", "PT"):
        parts = {k: int(v) for k, v in iso.groupdict().items() if v}
        return timedelta(
            weeks=parts.get("w", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    raise ValueError("must be a duration like '3d', '72h', '90m', '30s' or 'P3D'")


class ConfigProblems(ConfigError):
    """Every mistake found in a config, one line each (``problems``), so that an admin fixes
    them in one round instead of one per run; ``str()`` is all of them on one line."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(problems))
        self.problems = tuple(prefix + problem for problem in problems)


class _Section:
    """Reads typed keys from one TOML table and rejects unknown ones (typos).

    A mistake is added to ``problems`` and the key's default is used, so that parsing goes
    on and reports every mistake (:class:`ConfigProblems`), not only the first.
    """

    def __init__(self, data: Any, name: str, known: set[str], problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        if not isinstance(data, Mapping):
            problems.append(f"[{name}]: must be a table")
            data = {}
        self.data = data
        for key in sorted(set(data) - known):
            problems.append(f"{self.key(key)}: unknown key")

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name.endswith("]") else f"[{self.name}].{key}"

    def get(self, key: str, default: T, check: Callable[[Any], T]) -> T:
        if key not in self.data:
            return default
        try:
            return check(self.data[key])
        except (TypeError, ValueError) as exc:
            self.problems.append(f"{self.key(key)}: {exc}")
            return default


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError("must be a non-empty string")
    return value.strip()


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return check


def _workers(value: Any) -> int | None:
    """``"auto"`` (one worker process per CPU) or a count, 0 for none."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError('must be "auto" or an integer')
    if not 0 <= value <= 64:
        raise ValueError("must be between 0 and 64")
    return value


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an integer")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def _number(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("must be a number")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return float(value)

    return check


def _list(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise TypeError("must be a list")
        out: list[str] = []
        for i, element in enumerate(value):
            try:
                checked = item(element)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"item {i + 1} ({element!r}) {exc}") from None
            if checked not in out:
                out.append(checked)
        return tuple(out)

    return check


def _email(value: Any) -> str:
    text = _str(value).lower()
    if not _EMAIL.match(text):
        raise ValueError("must be an email address like 'name@example.com'")
    return text


def _recipient(value: Any) -> str:
    """One entry of ``[mail] recipients``: a full address, or a local part for every domain."""
    text = _str(value).lower()
    if "@" in text:
        return _email(text)
    if not re.fullmatch(r"[^@\s+]+", text):
        raise ValueError("must be a local part like 'support' or an address (no '+', no spaces)")
    return text


def _domain(value: Any) -> str:
    text = _str(value).lower().rstrip(".")
    if not _DOMAIN.match(text):
        raise ValueError("must be a domain name like 'example.com'")
    return text


def _duration(value: Any) -> timedelta:
    if not isinstance(value, str):
        raise TypeError("must be a duration string like '3d' or 'P3D'")
    result = parse_duration(value)
    if result <= timedelta(0):
        raise ValueError("must be longer than zero")
    return result


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}


def parse_size(value: str) -> int:
    """``"10MB"``, ``"512 KB"``, ``"2MiB"``, ``"1048576"`` → bytes (KB, MB, GB in 1024s, as
    mail clients count them)."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError("must be a size like '10MB', '512KB' or a number of bytes")
    unit = (match.group(2) or "b").lower().replace("i", "")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _size(low: int, high: int) -> Callable[[Any], int]:
    """A size in bytes: an integer, or a string with a unit (:func:`parse_size`)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError("must be a size like '10MB' or a number of bytes")
        size = parse_size(value) if isinstance(value, str) else value
        if not low <= size <= high:
            raise ValueError(f"must be between {low} and {high} bytes")
        return size

    return check


def _keep_for(value: Any) -> timedelta | None:
    """A retention period: a duration, or "0"/"off" to keep forever (None)."""
    if isinstance(value, str) and value.strip().lower() in ("0", "off"):
        return None
    try:
        return _duration(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or 'off' to keep forever") from None


def _database_url(value: Any) -> str:
    text = _str(value)
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", text):
        raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
    return text


def _regex(value: Any) -> str:
    text = _str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = _str(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r} (e.g. 'Europe/Berlin')") from None
    return text


def _clock_time(value: Any) -> str:
    text = _str(value)
    if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", text):
        raise ValueError("must be a time like '09:00'")
    return text


def _holidays(value: Any) -> str | None:
    text = _str(value)
    if text.lower() == "none":
        return None
    if not re.match(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$", text):
        raise ValueError("must be a country and subdivision like 'DE-BE', or 'none'")
    return text


def _readable_file(value: Any) -> str:
    text = _str(value)
    if not os.path.isfile(text):
        raise ValueError(f"{text!r} is not a readable file")
    return text


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def _dkim_selector(value: Any) -> str:
    """The name under ``_domainkey`` that holds the public key (RFC 6376 3.1): DNS labels."""
    text = _str(value).lower()
    if not _SELECTOR.match(text):
        raise ValueError("must be DNS labels like 'mail2026' (letters, digits, '-', '.')")
    return text


def _dkim_key(value: Any) -> str:
    """A PEM RSA private key file dkimpy can sign with: checked now, not at the first mail."""
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    text = _str(value)
    try:
        with open(text, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"cannot read {text!r}: {exc.strerror or exc}") from exc
    try:
        parse_pem_private_key(data)
    except (UnparsableKeyError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{text!r} is not a PEM RSA private key (make one with 'openssl genrsa 2048')"
        ) from exc
    return text


def _url(value: Any) -> str:
    text = _str(value)
    if not re.match(r"^https?://\S+$", text):
        raise ValueError("must be an http(s) URL")
    return text


def _secret(value: Any) -> str:
    text = _str(value)
    if len(text) < 16:
        raise ValueError("must be at least 16 characters (it keys the reply tokens)")
    return text


def _secrets_key(value: Any) -> bytes:
    """The vault's key: 32 random bytes in base64 (``openssl rand -base64 32``)."""
    try:
        key = base64.b64decode(_str(value), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ValueError("must be 32 bytes in base64, e.g. from `openssl rand -base64 32`")
    return key


def _tag(value: Any) -> str:
    text = _str(value)
    if text.count("{id}") != 1:
        raise ValueError("must contain '{id}' exactly once, e.g. '[#{id}]'")
    return text


def _lower(value: Any) -> str:
    return _str(value).lower()


_AUTHSERV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]*")


def _authserv_id(value: Any) -> str:
    """An authserv-id (RFC 8601 section 2.5) as MTAs write it: a host name, compared
    case-insensitively."""
    text = _str(value)
    if not _AUTHSERV_ID.fullmatch(text):
        raise ValueError("must be a host name like 'mx.example.com' (your MTA's authserv-id)")
    return text.lower().rstrip(".")


# Free-mail providers: their domains never identify an organization (anyone can sign up).
FREEMAIL_DOMAINS: frozenset[str] = frozenset(
    """
    gmail.com googlemail.com outlook.com outlook.de hotmail.com hotmail.de live.com live.de
    msn.com yahoo.com yahoo.de ymail.com icloud.com me.com mac.com aol.com aol.de gmx.de
    gmx.net gmx.at gmx.ch gmx.com gmx.fr web.de t-online.de freenet.de posteo.de posteo.net
    mailbox.org arcor.de 1und1.de online.de email.de mail.de vodafone.de kabelmail.de
    protonmail.com proton.me pm.me tutanota.com tutanota.de tuta.io zoho.com yandex.ru
    yandex.com mail.ru orange.fr free.fr laposte.net libero.it bluewin.ch
    """.split()  # noqa: SIM905  (one word per domain reads better than 51 quoted lines)
)
