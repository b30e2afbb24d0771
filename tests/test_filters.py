"""The auto-reply checks, one table: robots are recognised, people are not."""

from __future__ import annotations

import pytest

from mailgate.parser import parse
from mailgate.pipeline.filters import auto_reply_reason


@pytest.mark.parametrize(
    ("headers", "robot"),
    [
        ("Auto-Submitted: auto-replied\r\n", True),
        ("Auto-Submitted: auto-generated\r\n", True),
        ("Auto-Submitted: auto-replied (zimbra; vacation)\r\n", True),
        ("Auto-Submitted: no\r\n", False),
        ("Precedence: bulk\r\n", True),
        ("Precedence: list\r\n", True),
        ("Precedence: first-class\r\n", False),
        ("X-Autoreply: yes\r\n", True),
        ("X-Autorespond: yes\r\n", True),
        ("X-Auto-Response-Suppress: All\r\n", True),
        ("List-Id: <kunden.lists.example>\r\n", True),
        ("List-Unsubscribe: <mailto:u@x.example>\r\n", True),
        ("Subject: Automatische Antwort: Drucker\r\n", True),
        ("Subject: Abwesenheitsnotiz: Drucker\r\n", True),
        ("Subject: Out of Office: Drucker\r\n", True),
        ("Subject: Automatic reply: Drucker\r\n", True),
        ("Subject: Drucker kaputt\r\n", False),
        ("Subject: Frage zur automatischen Antwort\r\n", False),
        ("", False),
    ],
)
def test_auto_reply_reason(headers: str, robot: bool) -> None:
    if "Subject:" not in headers:
        headers += "Subject: Re: Drucker\r\n"
    raw = f"From: a@b.example\r\n{headers}\r\nText\r\n".encode()
    reason = auto_reply_reason(parse(raw))
    assert (reason is not None) == robot, reason
