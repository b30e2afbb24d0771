"""Evaluation of reply trimming (``mailgate.quotes.strip_quoted``) on the shared corpus.

What it measures, for mailgate's own trimmer and for the maintained library
``mail-parser-reply`` (``mailparser_reply.EmailReplyParser``, all its languages), on the
same inputs:

* exact match: the output equals the expected new text after whitespace normalisation
  (each line's spacing collapsed, blank lines and indentation ignored);
* over-stripping: words of the expected text are missing from the output. This is the
  dangerous error: a customer's words do not reach the ticket comment;
* under-stripping: the output has words the expectation removed (quoted history,
  signatures): clutter, but nothing lost (the raw mail keeps everything anyway).

A fixture can count as both over and under (a wrong cut that drops text and keeps quotes).

Fixture groups (paths relative to the corpus, see its README.md):

* ``trimmer``: ``email-reply-trimmer/test/emails`` with the upstream ``trimmed/`` outputs;
* ``talon-text``: ``talon/.../standard_replies/*.eml`` through ``mailgate.parser.parse``
  (the real pipeline), expected "Hello" or the ``*_reply_text`` file (upstream rule);
* ``talon-html``: talon's HTML replies turned into text by ``mailgate.parser.parse``, compared
  ignoring all whitespace, as upstream does;
* ``crisp``: crisp's bodies whose upstream test asserts the visible text (mostly the shared
  ``COMMON_FIRST_FRAGMENT``), plus false-positive traps that contain no quote at all (the
  expectation is the input itself);
* ``github``: GitHub/Zapier bodies (byte-identical Zapier copies skipped), expectations
  hand-labelled from the upstream tests' assertions (first fragment / "Sent from" gone);
* ``talon-sig`` (traps only, no precision): talon's signature samples; the text above the
  expected signature must survive (mailgate does not strip delimiter-less signatures).

Then a screen without expectations (``wild``): every other corpus message (bounces and TNEF
left out) through ``mailgate.parser.parse``, counting the bodies a method changed at all.
Most of them are new mails, not replies, so each change deserves a look: ``--verbose``
prints what was removed, to check by eye that it is history, signature or footer only.

Run: ``python bench/quotes_eval.py [--verbose] [--only ours|library]``. The corpus is taken
from ``$MAILGATE_CORPUS``, else ``../shared/corpus`` next to the work tree. Needs
``pip install mail-parser-reply`` for the library columns (skipped when missing).
"""

from __future__ import annotations

import argparse
import difflib
import email.policy
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailgate.parser import parse  # noqa: E402
from mailgate.quotes import strip_quoted  # noqa: E402

CORPUS = Path(os.environ.get("MAILGATE_CORPUS", ROOT.parent / "shared" / "corpus"))

COMMON_FIRST_FRAGMENT = (
    "Fusce bibendum, quam hendrerit sagittis tempor, dui turpis tempus erat, pharetra sodales "
    "ante sem sit amet metus.\nNulla malesuada, orci non vulputate lobortis, massa felis "
    "pharetra ex, convallis consectetur ex libero eget ante.\nNam vel turpis posuere, rhoncus "
    "ligula in, venenatis orci. Duis interdum venenatis ex a rutrum.\nDuis ut libero eu lectus "
    "consequat consequat ut vel lorem. Vestibulum convallis lectus urna,\net mollis ligula "
    "rutrum quis. Fusce sed odio id arcu varius aliquet nec nec nibh."
)
# crisp fixtures whose upstream test asserts fragments[0] == COMMON_FIRST_FRAGMENT.
CRISP_COMMON = (
    "email_7",
    "email_8",
    "email_9",
    "email_10",
    "email_11",
    "email_12",
    "email_13",
    "email_14",
    "email_15",
    "email_16",
    "email_17",
    "email_18",
    "email_22",
    "email_23",
    "email_24",
    "email_25",
    "email_26",
    "email_portuguese",
    "email_german",
    "email_german_2",
    "email_german_3",
    "email_german_outlook",
    "email_norwegian_gmail",
    "email_finnish",
    "email_italian",
    "email_russian",
    "email_outlook_split_line_from",
    "email_gmail_split_line_from",
    "email_ios_outlook_fr",
    "email_ios_outlook",
    "email_msn",
    "email_fr_multiline",
    "email_french_2",
    "email_en_multiline_2",
    "email_original_message",
    "email_original_message_2",
    "email_danish_dash_separator",
    "email_french_dash_separator",
    "email_tricky_5_mixed_languages",
    "email_tricky_10_special_chars_in_name",
    "email_tricky_12_no_space_after_header",
    "email_tricky_14_long_quote_header",
    "email_tricky_15_original_message_variations",
)
ABHISHEK = (
    "Hi folks\n\nWhat is the best way to clear a Riak bucket of all key, values after\n"
    "running a test?\nI am currently using the Java HTTP API.\n\n-Abhishek Kona"
)
OH_THANKS = "Oh thanks.\n\nHaving the function would be great.\n\n-Abhishek Kona"
ONE_IS_NOT_ON = (
    "Thank, this is really helpful.\n\nOne outstanding question I had:\n\n"
    "Locally (on development), when I run..."
)
BULLETS = (
    "test 2 this should list second\n\nand have spaces\n\nand retain this formatting\n\n\n"
    "   - how about bullets\n   - and another"
)
TEXTMATE = (
    "On your remote host you can run:\n\n     telnet 127.0.0.1 52698\n\nThis should connect "
    "to TextMate (on your Mac, via the tunnel). If that\nfails, the tunnel is not working."
)
ANOTHER = "Here is another email"
SAME = None  # expectation: the input itself (a trap without any quote)
# crisp: other upstream assertions (visible text / first fragment), hand-transcribed.
CRISP_OTHER: dict[str, str | None] = {
    "email_1": ABHISHEK,
    "email_3": OH_THANKS,
    "email_4": "Awesome! I haven't had another problem with it.",
    "email_5": SAME,
    "email_6": "I get proper rendering as well.\n\nSent a magnificent torch of pixels",
    "email_20": "On Thursday.",
    "email_21": SAME,
    "email_2_1": "Outlook with a reply",
    "correct_sig": "this is an email with a correct -- signature.",
    "sig_no_empty_line": "this is an email with a signature with no empty line above.",
    "email_one_is_not_on": ONE_IS_NOT_ON,
    "email_sent_from": (
        "Hi it can happen to any texts you type, as long as you type in between words or "
        "paragraphs."
    ),
    "email_emoji": SAME,
    "email_zoho": (
        "What is the best way to clear a Riak bucket of all key, values after\nrunning a test?"
    ),
    "email_with_regards": "Hi,\n\nI still have the same problem....\n\nCan you help?",
    "email_not_a_signature": SAME,
    "email_not_a_signature_2": SAME,
    "email_sent_from_my_not_signature": SAME,
    "email_blackberry": ANOTHER,
    "email_iphone": ANOTHER,
    "email_multi_word_sent_from_my_mobile_device": ANOTHER,
    "email_bullets": BULLETS,
    "email_custom_quote_header": "Thank you!",
    "email_customer_quote_header_2": "Thank you very much.",
    "email_customer_quote_header_3": (
        "bonjour,\nje n'ai pas eu de retour sur ma précision..\nmerci d'avance"
    ),
    "email_thread": "This is new email reply in thread from bellow.",
    "email_unquoted_reply": "This is my reply.",
    "email_reply_header": None,  # set below: everything above "On Wed, Dec 9"
    "email_tricky_1_on_false_positive": SAME,
    "email_tricky_2_url_with_wrote": SAME,
    "email_tricky_3_code_block": SAME,
    "email_tricky_4_from_in_body": SAME,
    "email_tricky_6_regards_in_sentence": SAME,
    "email_tricky_7_multiple_dashes": SAME,
    "email_tricky_8_sent_from_in_content": SAME,
    "email_tricky_9_nested_quotes": "I agree with the points below.",
    "email_tricky_11_double_signature": "Thanks for your help!\n\nBest regards,\nJohn",
    "email_tricky_13_timestamp_variations": SAME,
    "email_tricky_16_unicode_signatures": SAME,
    "email_tricky_17_forward_header": "See the forwarded message below.",
    "email_tricky_18_inline_reply": SAME,
    "email_tricky_19_quote_without_header": SAME,
    "email_tricky_20_html_entities": (
        "The data should be &gt; 100 and &lt; 200.\n\n"
        "We need to ensure that &amp; symbols are handled correctly."
    ),
}
# GitHub / Zapier bodies: expectations hand-labelled from the upstream tests' assertions.
GITHUB: dict[str, str | None] = {
    "github/correct_sig": "this is an email with a correct -- signature.",
    "github/email_1_1": ABHISHEK,
    "github/email_1_3": OH_THANKS,
    "github/email_1_4": "Awesome! I haven't had another problem with it.",
    "github/email_1_5": SAME,
    "github/email_1_6": (
        "I get proper rendering as well.\n\nSent from a magnificent torch of pixels"
    ),
    "github/email_1_7": ":+1:",
    "github/email_2_1": "Outlook with a reply",
    "github/email_2_2": "Outlook with a reply directly above line",
    "github/email_2_3": "Outlook with a reply directly above line",
    "github/email_BlackBerry": ANOTHER,
    "github/email_iPhone": ANOTHER,
    "github/email_multi_word_sent_from_my_mobile_device": ANOTHER,
    "github/email_bullets": BULLETS,
    "github/email_one_is_not_on": ONE_IS_NOT_ON,
    "github/email_sent_from_my_not_signature": SAME,
    "github/email_sig_delimiter_in_middle_of_line": SAME,
    "github/greedy_on": TEXTMATE,
    "github/pathological": (
        "I think you're onto something. I will try to fix the problem as soon as I\n"
        "get back to a computer."
    ),
    "zapier/email_2_3": "Outlook with a reply above headers using unusual format",
    "zapier/email_gmail": "This is a test for inbox replying to a github message.",
    "zapier/email_headers_no_delimiter": "And another reply!",
    "zapier/email_partial_quote_header": TEXTMATE,
}
# Inline (bottom) posting without expectation: these answers must all survive.
INLINE_KEEP: dict[str, tuple[str, ...]] = {
    "github/email_1_2": ("Hi,", "You can list the keys", "would do it.", "individually."),
    "github/email_1_8": ("I will reply under this one", "and under this."),
    # 767 kB: one huge ">>>>" line between text (and a performance check).
    "github/email_long_quote": ("Hi folks", "I am currently using the Java HTTP API."),
    "crisp/email_2": ("Hi,", "You can list the keys", "would do it.", "individually."),
}

HTML_EXPECTED = "Hi. I am fine.\n\nThanks,\nAlex"
HTML_OTHER = {"reply-separated-by-hr.html": "Hi\nthere\nBob", "OLK_SRC_BODY_SECTION.html": "Reply"}

# Where mailgate's rules deliberately differ from an upstream expectation (see quotes.py).
BY_DESIGN = {
    "trimmer/embedded_email_7": "inline posting kept whole (answers below the quote)",
    "trimmer/embedded_email_17": "attribution at the very top: all-history fallback",
    "trimmer/embedded_email_18": "attribution at the very top: all-history fallback",
    "trimmer/embedded_email_french_2": "bottom posting kept whole (answer below the quote)",
    "trimmer/embedded_email_quote_text": "bottom posting kept whole (answer below the quote)",
    "trimmer/forwarded_message": "bare forward: nothing new, the whole text is returned",
    "trimmer/spam_1": "quote only: the whole text is returned, never an empty comment",
    "talon-text/iphone": "mobile footer removed (upstream keeps 'Sent from my iPhone')",
    "talon-text/sparrow": "'-- ' signature removed (upstream keeps it)",
    "talon-text/thunderbird": "bottom posting kept whole (answer below the quote)",
    "crisp/email_with_regards": "no delimiter-less signature detection ('Regards,' block)",
}


@dataclass
class Case:
    """One input with its expectation (exact text) or with phrases that must survive."""

    group: str
    name: str
    text: str
    expected: str | None = None
    keep: tuple[str, ...] = ()
    whitespace_blind: bool = False


@dataclass
class Score:
    cases: int = 0
    exact: int = 0
    over: int = 0
    under: int = 0
    traps: int = 0
    trap_lost: int = 0
    seconds: float = 0.0
    misses: list[tuple[str, str, str]] = field(default_factory=list)


def normalise(text: str) -> str:
    """Each line's whitespace collapsed, blank lines dropped: layout is not content."""
    lines = (" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def compare(expected: str, output: str, whitespace_blind: bool) -> tuple[bool, bool, bool]:
    """(exact, over-stripped, under-stripped) of one output against its expectation."""
    if whitespace_blind:
        exp, out = "".join(expected.split()), "".join(output.split())
        if exp == out:
            return True, False, False
        return False, exp not in out, out != exp and exp in out or len(out) > len(exp)
    exp_n, out_n = normalise(expected), normalise(output)
    if exp_n == out_n:
        return True, False, False
    matcher = difflib.SequenceMatcher(None, exp_n.split(), out_n.split(), autojunk=False)
    over = under = False
    for tag, _i1, _i2, _j1, _j2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            over = True
        if tag in ("insert", "replace"):
            under = True
    return False, over, under


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def html_message(markup: bytes) -> bytes:
    """A minimal RFC 822 message around an HTML body, so mailgate's parser converts it."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = "a@example.com"
    message["Subject"] = "Re: Test"
    message.set_content(markup.decode("utf-8", errors="replace"), subtype="html")
    return message.as_bytes()


def load_cases() -> list[Case]:
    cases: list[Case] = []
    trimmer = CORPUS / "email-reply-trimmer" / "test"
    for path in sorted((trimmer / "emails").glob("*.txt")):
        expected = read_text(trimmer / "trimmed" / path.name)
        cases.append(Case("trimmer", path.stem, read_text(path), expected))

    talon = CORPUS / "talon" / "tests" / "fixtures"
    for path in sorted((talon / "standard_replies").glob("*.eml")):
        reply = path.with_name(f"{path.stem}_reply_text")
        expected = read_text(reply).strip() if reply.exists() else "Hello"
        cases.append(Case("talon-text", path.stem, parse(path.read_bytes()).text, expected))
    html_paths = sorted((talon / "html_replies").glob("*.html"))
    html_paths += [talon / name for name in HTML_OTHER]
    for path in html_paths:
        text = parse(html_message(path.read_bytes())).text
        expected = HTML_OTHER.get(path.name, HTML_EXPECTED)
        cases.append(Case("talon-html", path.stem, text, expected, whitespace_blind=True))
    share = parse((talon / "reply-quotations-share-block.eml").read_bytes()).text
    share_expected = share.split("--- On Wed")[0]
    cases.append(Case("talon-text", "reply-quotations-share-block", share, share_expected))

    crisp = CORPUS / "crisp-email-reply-parser" / "test" / "fixtures"
    for name in CRISP_COMMON:
        cases.append(Case("crisp", name, read_text(crisp / f"{name}.txt"), COMMON_FIRST_FRAGMENT))
    for name, expected in CRISP_OTHER.items():
        text = read_text(crisp / f"{name}.txt")
        if name == "email_reply_header":
            expected = text.split("On Wed, Dec 9")[0]
        cases.append(Case("crisp", name, text, text if expected is SAME else expected))

    github = CORPUS / "github-email-reply-parser" / "test" / "emails"
    zapier = CORPUS / "zapier-email-reply-parser" / "test" / "emails"
    for key, expected in GITHUB.items():
        source, name = key.split("/")
        text = read_text((github if source == "github" else zapier) / f"{name}.txt")
        cases.append(Case("github", key, text, text if expected is SAME else expected))
    for key, phrases in INLINE_KEEP.items():
        source, name = key.split("/")
        folder = github if source == "github" else crisp
        group = "github" if source == "github" else "crisp"
        cases.append(Case(group, key, read_text(folder / f"{name}.txt"), keep=phrases))

    stripped = talon / "signature" / "emails" / "stripped"
    for body in sorted(stripped.glob("*_body")):
        stem = body.name.removesuffix("_body")
        text = read_text(body).replace("#sig#", "")
        signature = read_text(stripped / f"{stem}_signature").replace("#sig#", "").strip()
        above = text[: text.rindex(signature)] if signature else text
        phrases = tuple(line.strip() for line in above.splitlines() if line.strip())
        cases.append(Case("talon-sig", stem, text, keep=phrases))
    return cases


REPLY_SETS = ("email-reply-trimmer", "crisp-", "github-", "zapier-")


def load_wild() -> list[tuple[str, str]]:
    """(path, body text) of the corpus messages outside the reply-parser sets."""
    index = CORPUS / "index.tsv"
    bodies: list[tuple[str, str]] = []
    for row in index.read_text(encoding="utf-8").splitlines():
        path, _, category = row.partition("\t")
        if not path or category in ("bounce", "tnef") or path.startswith(REPLY_SETS):
            continue
        try:
            text = parse((CORPUS / path).read_bytes()).text
        except Exception:  # the parser's own tests cover failures; not this screen's job
            continue
        if text.strip():
            bodies.append((path, text))
    return bodies


def removed_part(original: str, output: str) -> str:
    """The start of what a method removed, for eyeballing."""
    before, after = normalise(original).split("\n"), normalise(output).split("\n")
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    gone = [
        " / ".join(before[i1:i2])
        for tag, i1, i2, _j1, _j2 in matcher.get_opcodes()
        if tag in ("delete", "replace")
    ]
    return " … ".join(gone)[:160]


def screen(bodies: list[tuple[str, str]], method: Callable[[str], str]) -> list[tuple[str, str]]:
    """(path, removed text) of every body the method changed."""
    changed = []
    for path, text in bodies:
        try:
            output = method(text)
        except Exception as exc:
            output = f"<{type(exc).__name__}>"
        if normalise(output) != normalise(text):
            changed.append((path, removed_part(text, output)))
    return changed


def library() -> Callable[[str], str] | None:
    """mail-parser-reply's ``parse_reply`` with every language it ships, or None."""
    try:
        from mailparser_reply import EmailReplyParser
        from mailparser_reply.constants import MAIL_LANGUAGES
    except ImportError:
        return None
    parser = EmailReplyParser(languages=sorted(MAIL_LANGUAGES))

    def run(text: str) -> str:
        return parser.parse_reply(text) or ""

    return run


def library_body() -> Callable[[str], str] | None:
    """The library's first reply *body* (its signature and disclaimer removal applied)."""
    try:
        from mailparser_reply import EmailReplyParser
        from mailparser_reply.constants import MAIL_LANGUAGES
    except ImportError:
        return None
    parser = EmailReplyParser(languages=sorted(MAIL_LANGUAGES))

    def run(text: str) -> str:
        replies = parser.read(text).replies
        return replies[0].body if replies else ""

    return run


def evaluate(cases: Iterable[Case], method: Callable[[str], str]) -> dict[str, Score]:
    scores: dict[str, Score] = {}
    for case in cases:
        score = scores.setdefault(case.group, Score())
        started = time.perf_counter()
        try:
            output = method(case.text)
        except Exception as exc:  # a library crash counts as losing everything
            output = ""
            print(f"  ! {case.group}/{case.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        score.seconds += time.perf_counter() - started
        if case.expected is None:
            score.traps += 1
            out = normalise(output)
            lost = [p for p in case.keep if " ".join(p.split()) not in out]
            if lost:
                score.trap_lost += 1
                score.misses.append((case.name, "LOST", "; ".join(lost)[:200]))
            continue
        score.cases += 1
        exact, over, under = compare(case.expected, output, case.whitespace_blind)
        score.exact += exact
        score.over += over
        score.under += under
        if not exact:
            kind = "OVER+UNDER" if over and under else "OVER" if over else "UNDER"
            score.misses.append((case.name, kind, output))
    return scores


def total(scores: dict[str, Score]) -> Score:
    result = Score()
    for score in scores.values():
        result.cases += score.cases
        result.exact += score.exact
        result.over += score.over
        result.under += score.under
        result.traps += score.traps
        result.trap_lost += score.trap_lost
        result.seconds += score.seconds
    return result


def print_table(results: dict[str, dict[str, Score]]) -> None:
    groups = sorted({group for scores in results.values() for group in scores})
    header = (
        f"{'group':<11} {'method':<14} {'fixtures':>8} {'exact':>6} {'exact %':>8} "
        f"{'over':>5} {'under':>6} {'traps':>6} {'lost':>5} {'ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for group in [*groups, "ALL"]:
        for method, scores in results.items():
            score = total(scores) if group == "ALL" else scores.get(group, Score())
            percent = f"{100 * score.exact / score.cases:.1f}" if score.cases else "-"
            print(
                f"{group:<11} {method:<14} {score.cases:>8} {score.exact:>6} {percent:>8} "
                f"{score.over:>5} {score.under:>6} {score.traps:>6} {score.trap_lost:>5} "
                f"{1000 * score.seconds:>8.1f}"
            )
        print()


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--verbose", action="store_true", help="show every miss and its output")
    args.add_argument("--only", choices=["ours", "library"], help="evaluate one method")
    options = args.parse_args()
    logging.getLogger("mailparser").setLevel(logging.ERROR)  # "content … not handled" noise
    if not (CORPUS / "email-reply-trimmer").is_dir():
        print(f"corpus not found at {CORPUS}", file=sys.stderr)
        return 2
    cases = load_cases()
    methods: dict[str, Callable[[str], str]] = {}
    if options.only in (None, "ours"):
        methods["mailgate"] = strip_quoted
    if options.only in (None, "library"):
        lib, lib_body = library(), library_body()
        if lib is None or lib_body is None:
            print("mail-parser-reply not installed: library skipped", file=sys.stderr)
        else:
            methods["lib.parse_reply"] = lib
            methods["lib.body"] = lib_body
    results = {name: evaluate(cases, method) for name, method in methods.items()}
    print(
        "exact = equal after whitespace normalisation; over = expected words missing "
        "(customer text lost);\nunder = extra words kept (quotes/signatures); traps = "
        "no-expectation fixtures whose new text must survive,\nlost = traps that lost it; "
        "ms = total time.\n"
    )
    print_table(results)
    bodies = load_wild()
    print(f"wild: ordinary corpus mails changed (of {len(bodies)} non-empty bodies)")
    screens = {name: screen(bodies, method) for name, method in methods.items()}
    for name, changed in screens.items():
        print(f"  {name:<16} {len(changed):>4}")
    print()
    for name, scores in results.items():
        print(f"== misses of {name}")
        for group, score in sorted(scores.items()):
            for case, kind, output in score.misses:
                key = f"{group}/{case}"
                note = BY_DESIGN.get(key, "") if name == "mailgate" else ""
                print(f"  {kind:<10} {key}" + (f"  [by design: {note}]" if note else ""))
                if options.verbose:
                    shown = output if len(output) < 600 else output[:600] + " …"
                    print("      | " + shown.replace("\n", "\n      | "))
        print()
    if options.verbose:
        for name, changed in screens.items():
            print(f"== wild: bodies changed by {name} (removed text)")
            for path, gone in changed:
                print(f"  {path}\n      - {gone}")
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
