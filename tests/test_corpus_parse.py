"""The parser against the shared real-world corpus (see its README.md and index.tsv).

1. Every indexed file goes through :func:`parse` without any exception other than
   :class:`UnparseableMessage`, every string it returns is storable in PostgreSQL, and no
   real mail is rejected.
2. Zammad's expected parse results (``zammad/test/data/mail/*.yml``) agree with ours for
   subject, sender address and body text. The measured agreement is printed (``pytest -s``)
   and the thresholds sit just below it, so a regression fails.

The corpus files are byte-exact fixtures: they are only read, never modified.
"""

from __future__ import annotations

import base64
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailgate.mail.htmltext import _html_to_text
from mailgate.parser import InboundMessage, UnparseableMessage, parse

from .conftest import CORPUS, corpus_files, corpus_missing
from .test_parser import strings

if not (CORPUS / "index.tsv").is_file():
    pytest.skip(corpus_missing(CORPUS / "index.tsv"), allow_module_level=True)

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")
_LOOKS_LIKE_HTML = re.compile(r"<(?:p|div|br|table|span|a|b|strong|html|body)\b[^>]*>", re.I)

# Sources whose files are real mails (headers + body): none of them may be rejected.
REAL_MAIL_SOURCES = ("zammad", "sisimai-set-of-emails", "ruby-mail", "flanker", "discourse")
# Measured on 1,468 files: 242 are rejected, all of them without a header block (body-only
# reply samples, TNEF streams, Outlook .msg files, HTML snippets, 0-3 byte files).
MAX_UNPARSEABLE = 242


def test_every_corpus_file_parses_cleanly() -> None:
    rows = corpus_files()
    assert len(rows) == 1468
    problems: list[str] = []
    rejected: dict[str, str] = {}
    timings: list[tuple[float, str]] = []
    total = 0.0
    for path, _category in rows:
        raw = (CORPUS / path).read_bytes()
        start = time.perf_counter()
        try:
            message = parse(raw)
        except UnparseableMessage as exc:
            rejected[path] = str(exc)
            continue
        except Exception as exc:  # the point of the test: report, do not stop
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        finally:
            elapsed = time.perf_counter() - start
            total += elapsed
            timings.append((elapsed, path))
        assert isinstance(message, InboundMessage)
        for text in strings(message):
            if _BAD_CHARS.search(text):
                problems.append(f"{path}: NUL or lone surrogate in {text[:80]!r}")
                break

    reasons = Counter(rejected.values())
    per_source = Counter(path.split("/", 1)[0] for path in rejected)
    slowest = sorted(timings, reverse=True)[:3]
    print(
        f"\ncorpus: {len(rows)} files, {len(rows) - len(rejected)} parsed, "
        f"{len(rejected)} UnparseableMessage, parse() total {total:.2f}s"
    )
    print(f"  rejected by reason: {dict(reasons)}")
    print(f"  rejected by source: {dict(per_source)}")
    print("  slowest: " + ", ".join(f"{path} {seconds:.2f}s" for seconds, path in slowest))

    assert not problems, "\n".join(problems)
    real_rejected = [p for p in rejected if p.startswith(REAL_MAIL_SOURCES)]
    real_rejected = [p for p in real_rejected if (CORPUS / p).stat().st_size > 3]
    assert not real_rejected, real_rejected
    assert len(rejected) <= MAX_UNPARSEABLE, sorted(rejected)
    assert slowest[0][0] < 5.0


# --------------------------------------------------------------------------------------
# Zammad expectations
# --------------------------------------------------------------------------------------

ZAMMAD = CORPUS / "zammad" / "test" / "data" / "mail"

# Measured: subject 28/28, from_email 24/26, body 25/25 (text only: 23/25). The misses are
# deliberate: 071 and 076 have From addresses that are not valid mailboxes ("power quadrant
# system@example.com", '"Millions Lottery Spain transfer"@example.com>'), which the parser
# skips. Text only: Zammad stores the HTML alternative, and in 001 the plain alternative was
# anonymised differently (other phone numbers), in 026 the HTML one is visually empty.
THRESHOLDS = {"subject": 0.99, "from_email": 0.92, "body": 0.99, "body_text_only": 0.91}


def load_zammad_yml(path: Path) -> dict[str, Any]:
    """A Zammad expectation file; its Ruby-specific tags become plain dicts and bytes."""
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    def ruby_object(loader: Any, _suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("!ruby/", ruby_object)
    Loader.add_constructor(
        "!binary", lambda loader, node: base64.b64decode(loader.construct_scalar(node))
    )
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


def normalise(text: str) -> str:
    """Compare text, not layout: all whitespace runs become one space."""
    return _WHITESPACE.sub(" ", text).strip()


def expected_body_text(expected: dict[str, Any]) -> str:
    """Zammad's body as text: its sanitised HTML is converted like ours is.

    Zammad stores HTML bodies (``content_type: text/html``; some older ymls omit the key but
    the body is HTML all the same) and writes ``no visible content`` for an empty body.
    """
    body = str(expected["body"])
    if body == "no visible content":
        return ""
    is_html = expected.get("content_type") == "text/html" or (
        "content_type" not in expected and _LOOKS_LIKE_HTML.search(body)
    )
    return _html_to_text(body) if is_html else body


def body_agrees(expected: dict[str, Any], message: InboundMessage) -> tuple[bool, bool]:
    """(fair, text-only) agreement of the body.

    Fair: Zammad picks the HTML alternative when there is one, so where it stored HTML and we
    have HTML too, the two HTML bodies are compared as text; otherwise our ``text``.
    Text-only: always our ``text`` (which prefers the plain alternative).
    """
    want = normalise(expected_body_text(expected))
    text_only = normalise(message.text) == want
    zammad_html = expected.get("content_type") == "text/html" or (
        "content_type" not in expected and _LOOKS_LIKE_HTML.search(str(expected["body"]))
    )
    if zammad_html and message.html is not None:
        return normalise(_html_to_text(message.html)) == want, text_only
    return text_only, text_only


def test_zammad_expectations_agree() -> None:
    pairs = sorted(ZAMMAD.glob("*.yml"))
    assert len(pairs) == 28
    agree: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    misses: list[str] = []
    for yml in pairs:
        expected = load_zammad_yml(yml)
        message = parse(yml.with_suffix(".box").read_bytes())
        results: dict[str, bool] = {}
        if "subject" in expected:
            # our subject is whitespace-trimmed by contract; Zammad keeps edge spaces
            results["subject"] = normalise(str(expected["subject"])) == normalise(message.subject)
        if "from_email" in expected:
            got = message.from_.email if message.from_ else None
            results["from_email"] = got == str(expected["from_email"]).lower()
        if "body" in expected:
            results["body"], results["body_text_only"] = body_agrees(expected, message)
        for field_name, ok in results.items():
            asked[field_name] += 1
            agree[field_name] += ok
            if not ok:
                misses.append(f"{yml.stem}:{field_name}")

    print(f"\nZammad agreement over {len(pairs)} expectation files:")
    for field_name in THRESHOLDS:
        rate = agree[field_name] / asked[field_name]
        print(f"  {field_name:15} {agree[field_name]:2}/{asked[field_name]:2} = {rate:.1%}")
    print(f"  misses: {', '.join(misses)}")
    for field_name, threshold in THRESHOLDS.items():
        assert agree[field_name] / asked[field_name] >= threshold, (field_name, misses)
