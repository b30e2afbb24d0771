"""Large base64 attachments decoded straight from the raw mail, beside the parse.

The email package holds a mail several times over while it parses it and reads it a line at
a time: for a mail with a large attachment that was most of the parse's CPU and its peak
memory (the figures are at ``_LARGE_PART``). A body that is certainly a base64 attachment
is replaced by a small marker before parsing, and decoded from the raw bytes afterwards into
the attachment the marker became.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re

from mailgate.mail.mime import Attachment

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
    attachments: tuple[Attachment, ...], data: bytes, aside: list[tuple[bytes, int, int]]
) -> tuple[Attachment, ...] | None:
    """Put the set-aside bodies, decoded from ``data``, back as attachment contents.

    None when a marker did not come out as exactly one attachment (then the caller parses
    the whole mail the ordinary way: correctness before memory).
    """
    by_marker = {marker: (start, end) for marker, start, end in aside}
    found = [a for a in attachments if a.data in by_marker]
    if len(found) != len(aside) or len({a.data for a in found}) != len(aside):
        return None
    restored = []
    for attachment in attachments:
        span = by_marker.get(attachment.data)
        if span is not None:
            try:
                # binascii reads the memoryview in place; base64.b64decode would copy it.
                content = binascii.a2b_base64(memoryview(data)[span[0] : span[1]])
            except (binascii.Error, ValueError):
                return None
            attachment = dataclasses.replace(attachment, data=content)
        restored.append(attachment)
    return tuple(restored)
