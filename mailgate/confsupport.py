"""The ``[support]`` section: the phone numbers customers are given and who is paged.

Kept beside :mod:`mailgate.config` (which reads it through :func:`parse_support`) so the
emergency settings and their checks across sections stay in one short place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailgate.confvalues import _email, _list, _Section, _str

DEFAULT_KEYWORDS: tuple[str, ...] = ("NOTFALL", "EMERGENCY", "DRINGEND", "URGENT")


def _keyword(value: Any) -> str:
    """A keyword is matched as a whole word: letters, digits, ``-`` and ``_`` only."""
    text = _str(value)
    if not re.fullmatch(r"[\w-]+", text):
        raise ValueError("must be one word (letters, digits, '-' or '_')")
    return text


def _phone(value: Any) -> str:
    """Shown as written (it may say "+49 30 1234567-99 (on call)"): one short line."""
    text = _str(value)
    if len(text) > 60 or not text.isprintable() or not re.search(r"\d", text):
        raise ValueError("must be a phone number on one line, like '+49 30 1234567-0'")
    return text


@dataclass(frozen=True, slots=True)
class SupportConfig:
    """What the acknowledgement tells a customer to call, and the emergency rule."""

    phone: str | None = None  # shown in support hours
    emergency_phone: str | None = None  # shown outside them
    # A new ticket (or a customer's reply) with one of these words in its subject or first
    # line is an emergency: priority urgent, tag emergency, paged outside support hours.
    emergency_keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    emergency_notify: tuple[str, ...] | None = None  # None: [agents] notify

    def paged(self, notified: tuple[str, ...]) -> tuple[str, ...]:
        """Who is paged for an emergency outside support hours; ``notified`` is
        ``[agents] notify`` as it applies (the default)."""
        return notified if self.emergency_notify is None else self.emergency_notify

    def warnings(self, notified: tuple[str, ...]) -> tuple[str, ...]:
        """What ``check-config`` should say about settings that are valid but unwise."""
        found: list[str] = []
        if self.emergency_keywords and not self.paged(notified):
            found.append(
                "[support].emergency_notify: nobody is paged for an emergency outside "
                "support hours (it and [agents] notify are empty); set emergency_notify or "
                "emergency_keywords = [] to turn emergencies off"
            )
        if self.emergency_keywords and self.emergency_phone is None:
            found.append(
                "[support].emergency_phone: not set; the out-of-hours acknowledgement gives "
                "no number to call"
            )
        return tuple(found)


def parse_support(s: _Section) -> SupportConfig:
    """``[support]`` read through the config's section reader (mistakes go to its list)."""
    return SupportConfig(
        phone=s.get("phone", None, _phone),
        emergency_phone=s.get("emergency_phone", None, _phone),
        emergency_keywords=s.get("emergency_keywords", DEFAULT_KEYWORDS, _list(_keyword)),
        emergency_notify=s.get("emergency_notify", None, _list(_email)),
    )


SUPPORT_KEYS = {"phone", "emergency_phone", "emergency_keywords", "emergency_notify"}
