"""HTML bodies to readable plain text, in linear time and without an extra dependency.

An HTML-only mail still needs the plain ``text`` that ingest strips of quotes, masks and
stores, and bounce detection reads. The stdlib's ``html.parser`` drives a small converter,
after a linear pass that removes what makes ``html.parser`` rescan the document (a ``<``
never closed, unclosed comments, ``<![`` sections); and an unclosed ``<head>`` cannot
swallow what the sender wrote.
"""

from __future__ import annotations

import re
from collections import Counter
from html import unescape
from html.parser import HTMLParser

from mailgate.mail.charsets import _clean
from mailgate.newlines import as_lf

_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "xml"})
_PARAGRAPH_TAGS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol"}
)
_LINE_TAGS = frozenset(
    {
        "div", "li", "tr", "dt", "dd", "dl", "hr", "address", "article", "aside", "center",
        "fieldset", "figure", "figcaption", "footer", "form", "header", "main", "nav",
        "section", "tbody", "thead", "tfoot", "caption", "html", "body",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_MAX_SKIP_NESTING = 10_000
_HTML_SPACE = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _HTMLToText(HTMLParser):
    """Readable plain text from HTML with the stdlib parser (no extra dependency)."""

    def __init__(self, skip_tags: frozenset[str] = _SKIP_TAGS) -> None:
        super().__init__(convert_charrefs=True)
        self._skip_tags = skip_tags
        self._out: list[str] = []
        self._skip: list[str] = []  # open elements whose content is not shown
        self._open: Counter[str] = Counter()  # how many of each are in self._skip
        self._pre = 0
        self._trailing_newlines = 2  # the start of the text counts as a break

    def _emit(self, text: str) -> None:
        if not text:
            return
        self._out.append(text)
        stripped = text.rstrip(" ")
        if not stripped:
            return
        newlines = len(stripped) - len(stripped.rstrip("\n"))
        if newlines == len(stripped):
            self._trailing_newlines += newlines
        else:
            self._trailing_newlines = newlines

    def _break(self, count: int) -> None:
        if self._trailing_newlines < count:
            self._emit("\n" * (count - self._trailing_newlines))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and (self._open["head"] or self._open["title"]):
            # a <head> that was never closed ends here
            self._skip = [t for t in self._skip if t not in ("head", "title")]
            self._open["head"] = self._open["title"] = 0
        if tag in self._skip_tags:
            if len(self._skip) < _MAX_SKIP_NESTING:
                self._skip.append(tag)
                self._open[tag] += 1
            return
        if self._skip:
            return
        if tag == "br":
            self._emit("\n")
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self._pre += 1
        elif tag in _LINE_TAGS:
            self._break(1)
            if tag == "li":
                self._emit("- ")
        elif tag in _CELL_TAGS and self._trailing_newlines == 0:
            self._emit(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._skip_tags:  # <script/> contains nothing
            return
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._skip_tags:
            if self._open[tag]:  # a counter, not "in self._skip": that would be quadratic
                while self._skip:
                    popped = self._skip.pop()
                    self._open[popped] -= 1
                    if popped == tag:
                        break
            return
        if self._skip:
            return
        if tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre" and self._pre:
                self._pre -= 1
        elif tag in _LINE_TAGS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self._emit(as_lf(data))
            return
        text = _HTML_SPACE.sub(" ", data)
        if text == " " and self._trailing_newlines:
            return
        self._emit(text.replace("\xa0", " "))

    @property
    def unclosed_head(self) -> bool:
        """True when a <head> or <title> was never closed (it swallowed the rest)."""
        return bool(self._open["head"] or self._open["title"])

    def text(self) -> str:
        """The collected text: lines trimmed, at most one blank line in a row."""
        lines = [line.strip() for line in "".join(self._out).split("\n")]
        return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


_TAG = re.compile(r"<[^<>]*>")


def _linear_markup(markup: str) -> str:
    """Rewrite markup so that html.parser works in linear time.

    html.parser rescans to the end of the document for every ``<`` that has no ``>``
    (``"<a " * 200000`` takes minutes), for unclosed comments and for ``<![`` sections.
    So comments, declarations and processing instructions are removed here, and a ``<``
    that is not closed by ``>`` before the next ``<`` is escaped as text. All with
    ``str.find`` and ``str.split``: linear in the length of the markup.
    """
    out: list[str] = []
    pos = 0
    while True:
        start = markup.find("<!--", pos)
        if start < 0:
            out.append(markup[pos:])
            break
        out.append(markup[pos:start])
        end = markup.find("-->", start + 4)
        if end < 0:  # unclosed: no later comment can close either; keep the text
            out.append(markup[start:].replace("<!--", ""))
            break
        pos = end + 3
    pieces = "".join(out).split("<")
    result = [pieces[0]]
    for piece in pieces[1:]:
        close = piece.find(">")
        if close < 0:
            result.append("&lt;" + piece)
        elif piece[:1] in ("!", "?"):  # <!DOCTYPE>, <![if]>, <![CDATA[, <?xml?>
            result.append(piece[close + 1 :])
        else:
            result.append("<" + piece)
    return "".join(result)


def _html_to_text(markup: str) -> str:
    """Convert an HTML body to readable text; a crude tag strip if the parser gives up."""
    markup = _linear_markup(markup)
    converter = _HTMLToText()
    try:
        converter.feed(markup)
        converter.close()
        text = converter.text()
        if not text and converter.unclosed_head:
            # A <head> or <title> that is never closed swallows the whole document. Browsers
            # would show nothing, but a ticket must not lose what the sender wrote.
            converter = _HTMLToText(_SKIP_TAGS - {"head", "title"})
            converter.feed(markup)
            converter.close()
            text = converter.text()
        return _clean(text)
    except Exception:  # html.parser has raised AssertionError on broken markup
        text = unescape(_TAG.sub(" ", markup))
        lines = [_HTML_SPACE.sub(" ", line).strip() for line in text.splitlines()]
        return _clean(_BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip())
