"""The one line-ending normalisation, for str and bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgate.newlines import as_lf

_TEXT = st.lists(st.sampled_from(["\r\n", "\r", "\n", "\r\r\n", "\n\r", "a", " "])).map("".join)


@given(_TEXT)
def test_every_crlf_and_lone_cr_becomes_lf(text: str) -> None:
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert as_lf(text) == expected
    assert as_lf(text.encode()) == expected.encode()
