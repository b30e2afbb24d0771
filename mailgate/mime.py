"""Notifications on the wire: RFC 5322 header fields and MIME parts, written as bytes.

Why not the stdlib's ``email`` package: it parses every header it is given into a tree of
tokens and folds that tree back, for every notification, although ours always have the same
shape. That was about 2 ms of a notification's 4 (issue #21: 22,000 notifications in one
``jobs run``). This module writes that shape directly, in one pass, from the decisions
below; ``tests/test_mime.py`` parses what it writes with the stdlib's strict policy.

The rules, in one place:

* Lines end in CRLF and fold at 78 octets where there is a place to fold (RFC 5322 2.1.1);
  nothing is ever longer than 998, a token longer than that is encoded and split.
* ASCII mode (the default, for any relay): header text that is not plain ASCII becomes
  RFC 2047 encoded-words, domains A-labels. UTF-8 mode (RFC 6532) writes text as it is.
* Bodies are quoted-printable (text) or base64 (files) at 76 characters a line (RFC 2045);
  the boundaries start with ``=_``, which neither encoding can produce.
* A file's name goes as a quoted string when it is short, printable ASCII, else as RFC 2231
  continuations (``filename*0*=utf-8''…``).
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mailgate.newlines import as_lf

CRLF = "\r\n"
FOLD_AT = 78  # RFC 5322 2.1.1: SHOULD be no more than 78 characters
LONGEST_TOKEN = 900  # longer words are encoded and split, far below the 998 limit
ENCODED_WORD = 66  # an encoded-word fits on the first line after "Subject: " (RFC 2047: 75)
QP_PIECE = 256 * 1024  # bytes of text quoted-printable encodes in one call

# RFC 5322 3.2.3 atext (RFC 6532 3.2: any non-ASCII UTF-8 too), for local parts and phrases.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_ATOM = re.compile(rf"^{_ATEXT}+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 2047 5(3): the characters a "Q"-encoded word may carry as they are, in any header.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
# RFC 2231 7: attribute-char, what an extended parameter value carries without %XX.
_ATTRIBUTE_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf of the body: its content type (``type/subtype``), and text or a file's bytes."""

    content_type: str
    text: str | None = None  # text/plain or text/html: UTF-8, quoted-printable
    data: bytes = b""  # a file: base64
    filename: str = ""


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def fold(name: str, tokens: Iterable[str], separator: str = " ") -> str:
    """``name: token…`` with the tokens joined by ``separator`` and a line break before a
    token that would pass :data:`FOLD_AT` (a separator's trailing space is the fold's)."""
    tail = separator.rstrip(" ")
    room = FOLD_AT - len(tail)  # a line may get the separator's tail after its last token
    lines = [f"{name}:"]
    for index, token in enumerate(tokens):
        if index:
            lines[-1] += tail
            if _octets(lines[-1]) + 1 + _octets(token) > room:
                lines.append(f" {token}")
                continue
        lines[-1] += f" {token}"
    return CRLF.join(lines) + CRLF


def _q_encode(chunk: bytes) -> str:
    return "".join(
        "_" if byte == 0x20 else chr(byte) if byte in _Q_SAFE else f"={byte:02X}" for byte in chunk
    )


def _chars_split(text: str, fits: int, cost: Callable[[str], int]) -> list[str]:
    """``text`` cut between characters into pieces whose cost stays within ``fits``."""
    pieces: list[str] = []
    start, used = 0, 0
    for index, char in enumerate(text):
        size = cost(char)
        if used + size > fits and index > start:
            pieces.append(text[start:index])
            start, used = index, 0
        used += size
    pieces.append(text[start:])
    return pieces


def encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded-words for ``text``, each whole characters and at most
    :data:`ENCODED_WORD` long; "Q" when it is shorter than "B" (mostly-Latin text)."""
    data = text.encode("utf-8")
    q_len = len(_q_encode(data))
    room = ENCODED_WORD - len("=?utf-8?q??=")
    if q_len <= (len(data) + 2) // 3 * 4:
        pieces = _chars_split(text, room, lambda c: len(_q_encode(c.encode("utf-8"))))
        return [f"=?utf-8?q?{_q_encode(p.encode('utf-8'))}?=" for p in pieces]
    pieces = _chars_split(text, room // 4 * 3, _octets)
    return [
        f"=?utf-8?b?{binascii.b2a_base64(p.encode('utf-8'), newline=False).decode()}?="
        for p in pieces
    ]


def _plain(word: str, utf8: bool) -> bool:
    """Whether a word of header text can stand as it is."""
    return (
        (utf8 or word.isascii())
        and "=?" not in word  # would be taken for an encoded-word
        and _CONTROL.search(word) is None
        and _octets(word) <= LONGEST_TOKEN
    )


def text_tokens(text: str, utf8: bool) -> list[str]:
    """Unstructured header text (``Subject``) as foldable tokens: plain words as they are,
    each run of words that are not plain as encoded-words. The space between two
    encoded-words is not part of the text (RFC 2047 6.2), so a run carries its spaces."""
    tokens: list[str] = []
    run: list[str] = []
    for word in text.split(" "):
        if word and _plain(word, utf8):
            if run:
                tokens.extend(encoded_words(" ".join(run)))
                run = []
            tokens.append(word)
        elif word:
            run.append(word)
    if run:
        tokens.extend(encoded_words(" ".join(run)))
    return tokens


def _quoted(text: str) -> str:
    """An RFC 5322 quoted-string: backslash and quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def address(addr: str, utf8: bool, display_name: str = "") -> str:
    """``local@domain`` (quoted when the local part is not a dot-atom), after a display
    name when one is given. The domain must already be as the mode wants it."""
    if _CONTROL.search(addr) or _CONTROL.search(display_name):
        raise ValueError(f"address {addr!r} has a control character")
    local, _, domain = addr.rpartition("@")
    if not local or not domain or (not utf8 and not addr.isascii()):
        raise ValueError(f"cannot write address {addr!r}")
    if not _DOT_ATOM.match(local):
        local = _quoted(local)
    spec = f"{local}@{domain}"
    if not display_name:
        return spec
    if all(_ATOM.match(w) for w in display_name.split(" ")) and (utf8 or display_name.isascii()):
        phrase = display_name
    elif display_name.isascii() or utf8:
        phrase = _quoted(display_name)
    else:
        phrase = " ".join(encoded_words(display_name))
    return f"{phrase} <{spec}>"


def _parameter(name: str, value: str) -> list[str]:
    """``name="value"``, or RFC 2231 continuations, as tokens of a header's parameter
    list, each short enough for a line of its own."""
    plain = f'{name}="{value}"'
    # Readers decode an encoded-word even in a quoted string, and unquote a name quoted
    # inside: such a name goes as RFC 2231 too, so that it reads as it was written.
    if (
        value.isascii()
        and _CONTROL.search(value) is None
        and not any(mark in value for mark in ('"', "\\", "=?"))
        and len(plain) + 2 <= FOLD_AT
    ):
        return [plain]
    escaped = [chr(b) if b in _ATTRIBUTE_SAFE else f"%{b:02X}" for b in value.encode("utf-8")]
    whole = f"{name}*=utf-8''{''.join(escaped)}"
    if len(whole) + 2 <= FOLD_AT:  # one piece: unnumbered, which every reader knows
        return [whole]
    tokens: list[str] = []
    current = "utf-8''"
    for piece in escaped:
        if len(f" {name}*{len(tokens)}*={current}{piece};") > FOLD_AT:
            tokens.append(f"{name}*{len(tokens)}*={current}")
            current = ""
        current += piece
    tokens.append(f"{name}*{len(tokens)}*={current}")
    return tokens


def _part_head(part: Part) -> str:
    if part.text is not None:
        return (
            f'Content-Type: {part.content_type}; charset="utf-8"{CRLF}'
            f"Content-Transfer-Encoding: quoted-printable{CRLF}"
        )
    head = f"Content-Type: {part.content_type}{CRLF}Content-Transfer-Encoding: base64{CRLF}"
    disposition = ["attachment"]
    if part.filename:
        disposition.extend(_parameter("filename", part.filename))
    return head + fold("Content-Disposition", disposition, "; ")


def _part_body(part: Part) -> bytes:
    if part.text is not None:
        text = as_lf(part.text)
        if not text.endswith("\n"):
            text += "\n"
        data = text.encode("utf-8")
        # A line at a time is what quoted-printable encodes, so pieces cut after a line
        # break give the very same bytes; between them another thread gets the GIL (a
        # 20 MB text was 0.1 s in one call, while serve's listener waited).
        pieces = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start + QP_PIECE)
            end = len(data) if end == -1 else end + 1
            pieces.append(binascii.b2a_qp(data[start:end], quotetabs=False, istext=True))
            start = end
        return b"".join(pieces).replace(b"\n", b"\r\n")
    lines = [
        binascii.b2a_base64(part.data[i : i + 57], newline=False)
        for i in range(0, len(part.data), 57)
    ]
    return b"".join(line + b"\r\n" for line in lines)


def boundary() -> str:
    """A boundary no part can contain: "=_" is neither quoted-printable nor base64."""
    return f"=_mailgate_{secrets.token_hex(12)}"


def multipart(subtype: str, parts: Sequence[Part | tuple[str, bytes]]) -> tuple[str, bytes]:
    """A ``multipart/<subtype>`` entity: its Content-Type field and its body. A part is a
    leaf, or an entity made by this function (its Content-Type field and body)."""
    mark = boundary()
    body: list[bytes] = []
    for part in parts:
        if isinstance(part, Part):
            head, content = _part_head(part), _part_body(part)
        else:
            head, content = part
        body.append(f"--{mark}{CRLF}{head}{CRLF}".encode())
        # The CRLF before a delimiter is the delimiter's (RFC 2046 5.1.1): the content's own
        # last line break stays the content's.
        body.append(content + CRLF.encode())
    body.append(f"--{mark}--{CRLF}".encode())
    field = fold("Content-Type", [f"multipart/{subtype};", f'boundary="{mark}"'], "")
    return field, b"".join(body)


def message(fields: Sequence[str], parts: Sequence[Part]) -> bytes:
    """The whole message: the folded ``fields`` (each ending in CRLF), MIME-Version, and
    the text parts as ``multipart/alternative``, inside ``multipart/mixed`` with the files
    after them when there are any."""
    texts = [p for p in parts if p.text is not None]
    files = [p for p in parts if p.text is None]
    entity = multipart("alternative", texts)
    if files:
        entity = multipart("mixed", [entity, *files])
    head = "".join(fields) + f"MIME-Version: 1.0{CRLF}" + entity[0]
    return (head + CRLF).encode("utf-8") + entity[1]
