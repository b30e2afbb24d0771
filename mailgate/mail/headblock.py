"""The header block in the raw bytes, before any MIME parser sees them.

Real mail arrives with a BOM, blank lines, an mbox ``From `` line or a junk line before its
headers, and with folded headers whose continuation lines lost their indentation (the email
package would then turn From, Subject and Content-Type into body text). Here is where the
headers are found to start, what is no mail at all is rejected with
:class:`UnparseableMessage`, the folding is repaired, and the end of the block is found.
"""

from __future__ import annotations

import re


class UnparseableMessage(ValueError):
    """The bytes are not an email at all (empty, or no header block)."""


_HEADER_LINE = re.compile(rb"[!-9;-~]{1,200}[ \t]*:")  # obsolete syntax allows "Name :"
_STRICT_HEADER_LINE = re.compile(rb"[!-9;-~]{1,200}:")
_MBOX_FROM = re.compile(rb"From (?![ \t]*:)")  # "From  : x" is an obsolete-syntax header
_LINE_SPLIT = re.compile(rb"\r\n|\r|\n")
_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*(?:\r\n|\r|\n))*")
_TRANSPORT_HEADERS = (
    b"received:",
    b"return-path:",
    b"message-id:",
    b"mime-version:",
    b"delivered-to:",
    b"dkim-signature:",
    b"x-original-to:",
)
_MAX_JUNK_LINES = 2


def _opens_header_block(lines: list[bytes], index: int) -> bool:
    """Whether ``lines[index]`` can start a header block.

    ``Name: value`` always can. The obsolete ``Name : value`` form only when the next line
    is a header or continuation too, so that a body line like ``Thanx :-)`` is not a mail.
    """
    if _STRICT_HEADER_LINE.match(lines[index]):
        return True
    if not _HEADER_LINE.match(lines[index]) or index + 1 >= len(lines):
        return False
    following = lines[index + 1]
    return following[:1] in (b" ", b"\t") or bool(_HEADER_LINE.match(following))


def _header_start(raw: bytes) -> tuple[bytes, list[str]]:
    """Bytes from the first header line on, or raise :class:`UnparseableMessage`.

    Tolerated before the headers, because real mail arrives like that: a UTF-8 BOM, blank
    or whitespace-only lines, indentation of the first header, an mbox ``From `` line, and
    up to two junk lines (e.g. ``---- Original email message ----``) when a real header
    block with transport headers follows. A body-only text or binary data is rejected.
    """
    data = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    if not data or data.isspace():  # not data.strip(): that copies a large mail whole
        raise UnparseableMessage("empty input: no header block")
    notes: list[str] = []
    match = _LEADING_BLANK_LINES.match(data)
    if match and match.end():
        data = data[match.end() :]
        notes.append("blank lines before the headers skipped")
    if data[:1] in (b" ", b"\t"):
        data = data.lstrip(b" \t")
        notes.append("first header line indented")
    head = _LINE_SPLIT.split(data[:65536], 60)
    start = 1 if _MBOX_FROM.match(head[0]) else 0  # mbox separator, the parser knows it
    for skip in range(_MAX_JUNK_LINES + 1):
        index = start + skip
        if index >= len(head) or not _opens_header_block(head, index):
            if index < len(head) and not head[index].strip():
                break  # an empty line ends the (empty) header block
            continue
        if skip == 0:
            return data, notes
        block = [line.lower() for line in head[index:]]
        if any(line.startswith(_TRANSPORT_HEADERS) for line in block):
            lines = _LINE_SPLIT.split(data, index)
            offset = len(data) - len(lines[-1])
            notes.append(f"{skip} junk line(s) before the headers skipped")
            return data[offset:], notes
        break
    raise UnparseableMessage("not an e-mail: no RFC 5322 header line at the start")


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_SPACED_NAME = re.compile(rb"\A([!-9;-~]{1,200})[ \t]+:")
_MAX_STRAY_RUN = 20


def _repair_headers(data: bytes) -> tuple[bytes, list[str]]:
    """Re-join header continuation lines that lost their indentation.

    Copy-pasted and re-injected mails often carry folded headers whose continuation lines
    start in column one. The email package then ends the header block at the first such
    line and turns every later header (From, Subject, Content-Type) into body text. A run
    of non-header lines that is followed by more header lines before the blank line is a
    continuation, so it is indented again; ``Name :`` (obsolete syntax) becomes ``Name:``.
    A header block that simply lacks the blank line before the body is left alone, and so
    is a run holding a ``--boundary`` line (a missing blank line before a MIME preamble).
    """
    lines: list[bytes] = []
    kinds: list[str] = []  # "h" header, "c" continuation, "s" stray
    for match in _LINE.finditer(data):
        line = match.group(0)
        content = line.rstrip(b"\r\n")
        if not content:
            break
        lines.append(line)
        if content[:1] in (b" ", b"\t"):
            kinds.append("c")
        elif _HEADER_LINE.match(content) or (not kinds and _MBOX_FROM.match(content)):
            kinds.append("h")
        else:
            kinds.append("s")
    if "s" not in kinds and not any(_SPACED_NAME.match(line) for line in lines):
        return data, []
    repaired = 0
    renamed = 0
    out: list[bytes] = []
    index = 0
    while index < len(lines):
        kind = kinds[index]
        if kind == "s":
            run_end = index
            while run_end < len(lines) and kinds[run_end] in ("s", "c"):
                run_end += 1
            strays = kinds[index:run_end].count("s")
            boundary = any(line.startswith(b"--") for line in lines[index:run_end])
            if index > 0 and run_end < len(lines) and strays <= _MAX_STRAY_RUN and not boundary:
                out.extend(
                    b" " + line if line[:1] not in (b" ", b"\t") else line
                    for line in lines[index:run_end]
                )
                repaired += strays
                index = run_end
                continue
            break  # the header block really ends here (missing blank line): keep it so
        line = lines[index]
        if kind == "h":
            fixed = _SPACED_NAME.sub(rb"\1:", line, count=1)
            renamed += fixed != line
            line = fixed
        out.append(line)
        index += 1
    if not repaired and not renamed:
        return data, []
    consumed = sum(len(line) for line in lines[:index])
    notes = []
    if repaired:
        notes.append(f"{repaired} unindented header continuation line(s) re-joined")
    if renamed:
        notes.append(f"{renamed} header name(s) with space before the colon")
    return b"".join(out) + data[consumed:], notes


def _header_block(data: bytes) -> bytes:
    """The bytes before the first empty line (all of them when there is none)."""
    ends = [i for i in (data.find(b"\n\n"), data.find(b"\r\n\r\n"), data.find(b"\r\r")) if i >= 0]
    return data[: min(ends)] if ends else data
