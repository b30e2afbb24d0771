"""Reply trimming (``strip_quoted``) and forward senders (``forwarded_original``).

The hand-written table pins each client shape our (mostly German) customers send; the
traps pin text that looks like history but is the customer's own and must survive. The
corpus test holds the measured precision on email-reply-trimmer's real replies, so a rule
change that loses more customer text, or matches fewer replies, fails here. Thresholds are
from ``bench/quotes_eval.py``: 57 of 64 exact (89.1 %), 0 over-stripped.
"""

from __future__ import annotations

import difflib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.quotes import forwarded_original, strip_quoted

from .conftest import CORPUS, corpus_missing

TRIMMER = CORPUS / "email-reply-trimmer" / "test"
MIN_EXACT_RATE = 0.89  # measured 57/64 = 0.8906
MAX_OVER_STRIPPED = 0  # measured 0

OLD = "Hallo Frau Schmidt,\n\nbitte starten Sie den Drucker neu.\n\nIhr Support"

STRIP_CASES: list[tuple[str, str, str]] = [
    (
        "outlook-de-separator",
        "Hallo,\n\nder Drucker geht wieder.\n\nGruß\nAnna\n\n-----Ursprüngliche Nachricht-----\n"
        "Von: Support <support@firma.de>\nGesendet: Dienstag, 12. März 2024 10:15\n"
        f"An: Anna Schmidt <anna@kunde.de>\nBetreff: AW: Drucker\n\n{OLD}",
        "Hallo,\n\nder Drucker geht wieder.\n\nGruß\nAnna",
    ),
    (
        "outlook-en-separator",
        "Works again, thanks.\n\n-----Original Message-----\nFrom: Support [mailto:s@firma.de]\n"
        f"Sent: Tuesday, March 12, 2024 10:15 AM\nTo: Anna\nSubject: RE: Printer\n\n{OLD}",
        "Works again, thanks.",
    ),
    (
        "outlook-de-header-block",
        "Danke!\n\n________________________________\nVon: Support <support@firma.de>\n"
        f"Gesendet: Dienstag, 12. März 2024 10:15\nAn: Anna Schmidt\nBetreff: AW: Drucker\n\n{OLD}",
        "Danke!",
    ),
    (
        "outlook-en-header-block",
        "Thanks!\n\nFrom: Support <support@firma.de>\nSent: Tuesday, March 12, 2024 10:15 AM\n"
        f"To: Anna Schmidt <anna@kunde.de>\nSubject: RE: Printer\n\n{OLD}",
        "Thanks!",
    ),
    (
        "outlook-bold-header",
        "Passt so.\n\n*Von:* Support Team <support@firma.de>\n*Gesendet:* Dienstag, 12. März 2024"
        f" 10:15\n*An:* Anna Schmidt <anna@kunde.de>\n*Betreff:* Drucker\n\n{OLD}",
        "Passt so.",
    ),
    (
        "outlook-wrapped-header",
        "Erledigt.\n\nVon: Support Team der Beispielfirma GmbH\n<support@firma.de>\n"
        "Gesendet: Dienstag, 12. März 2024 10:15\nAn: Anna Schmidt <anna@kunde.de>\n"
        f"Betreff: AW: Ein sehr langer Betreff, der\nüber zwei Zeilen geht\n\n{OLD}",
        "Erledigt.",
    ),
    (
        "webde-gmx-header",
        "Bitte um Rückruf.\n\nGesendet: Dienstag, 12. März 2024 um 10:15 Uhr\n"
        f'Von: "Support" <support@firma.de>\nAn: anna@kunde.de\nBetreff: Drucker\n\n{OLD}',
        "Bitte um Rückruf.",
    ),
    (
        "apple-gmail-de",
        "Vielen Dank!\n\nAm 12.03.2024 um 10:15 schrieb Anna Schmidt <a@b.de>:\n\n> Hallo\n> Welt",
        "Vielen Dank!",
    ),
    (
        "gmail-de-wrapped",
        "Vielen Dank!\n\nAm Di., 12. März 2024 um 10:15 Uhr schrieb Anna Schmidt <\n"
        "anna.schmidt@kunde.de>:\n\n> Hallo",
        "Vielen Dank!",
    ),
    (
        "gmail-de-name-first-wrapped",
        "Danke\n\nAnna Schmidt <anna@kunde.de> schrieb am Di., 12. März 2024,\n10:15:\n\n> Hallo",
        "Danke",
    ),
    (
        "gmail-en",
        "Sounds good.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Anna <a@b.de> wrote:\n\n> Hi\n>",
        "Sounds good.",
    ),
    (
        "gmail-en-wrapped",
        "Sounds good.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Anna Schmidt via Support\n"
        "<support@firma.de> wrote:\n\n> Hi",
        "Sounds good.",
    ),
    (
        "gmail-unquoted-history",  # Outlook mobile / HTML converted: no ">" below
        f"Ok.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Anna <a@b.de> wrote:\n\n{OLD}",
        "Ok.",
    ),
    (
        "apple-quoted-attribution",
        "Danke\n\n> Am 12.03.2024 um 10:15 schrieb Anna Schmidt <a@b.de>:\n> \n> Hallo",
        "Danke",
    ),
    (
        "thunderbird-de",
        "Passt.\n\nAm 12.03.24 um 10:15 schrieb Support:\n> Hallo\n>",
        "Passt.",
    ),
    (
        "french",
        "Merci !\n\nLe mar. 12 mars 2024 à 10:15, Anna <a@b.fr> a écrit :\n\n> Bonjour",
        "Merci !",
    ),
    (
        "french-wrapped",
        'Merci !\nLe 4 janv. 2024 19:03, "Anna Schmidt"\n<a@b.fr>\na écrit :\n\n> Bonjour',
        "Merci !",
    ),
    ("dutch", "Bedankt\n\nOp di 12 mrt. 2024 om 10:15 schreef Anna <a@b.nl>:\n\n> Hoi", "Bedankt"),
    (
        "spanish",
        "Gracias\n\nEl mar, 12 mar 2024 a las 10:15, Anna (<a@b.es>) escribió:\n\n> Hola",
        "Gracias",
    ),
    (
        "italian",
        "Grazie\n\nIl giorno mar 12 mar 2024 alle ore 10:15 Anna <a@b.it> ha scritto:\n\n> Ciao",
        "Grazie",
    ),
    (
        "forward-below-new-text",
        "Zur Info, siehe unten.\n\n---------- Forwarded message ---------\n"
        f"From: Anna <a@b.de>\nDate: Tue, Mar 12, 2024\nSubject: x\n\n{OLD}",
        "Zur Info, siehe unten.",
    ),
    (
        "trailing-quote-no-attribution",
        "Ok, mache ich.\n\n> alter Text\n> noch mehr",
        "Ok, mache ich.",
    ),
    (
        "signature",
        "Hallo,\n\ngeht wieder.\n\n-- \nAnna Schmidt\nKunde GmbH\nTel. 030 1234567",
        "Hallo,\n\ngeht wieder.",
    ),
    (
        "signature-without-space",
        "Hallo,\n\ngeht wieder.\n--\nAnna Schmidt",
        "Hallo,\n\ngeht wieder.",
    ),
    (
        "signature-then-history",
        "Geht.\n\n-- \nAnna\n\nAm 12.03.2024 um 10:15 schrieb Support <s@f.de>:\n> Hallo",
        "Geht.",
    ),
    ("footer-iphone-de", "Passt.\n\nVon meinem iPhone gesendet", "Passt."),
    ("footer-iphone-en", "Fine.\n\nSent from my iPhone", "Fine."),
    (
        "footer-outlook-android",
        "Passt.\n\nGesendet von Outlook für Android<https://aka.ms/AAb9ysg>",
        "Passt.",
    ),
    ("footer-outlook-ios", "Fine.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>", "Fine."),
    ("footer-french", "D'accord.\n\nEnvoyé de mon iPhone", "D'accord."),
    (
        "footer-then-unquoted-history",
        f"Passt.\n\nVon meinem Samsung Galaxy Smartphone gesendet.\n\n{OLD}",
        "Passt.",
    ),
    (
        "inline-posting-kept",
        "Am 12.03.2024 um 10:15 schrieb Support <s@f.de>:\n> Welche Seriennummer?\n\nSN 12345\n\n"
        "> Seit wann?\n\nSeit Montag.\n\n-- \nAnna Schmidt\nKunde GmbH",
        "Am 12.03.2024 um 10:15 schrieb Support <s@f.de>:\n> Welche Seriennummer?\n\nSN 12345\n\n"
        "> Seit wann?\n\nSeit Montag.",
    ),
    (
        "inline-posting-trailing-quote-removed",
        "> Welche Seriennummer?\n\nSN 12345\n\n> Rest der alten Mail\n> Ihr Support",
        "> Welche Seriennummer?\n\nSN 12345",
    ),
    (
        "bottom-posting-kept",
        "Am 12.03.24 um 10:15 schrieb Support:\n> Geht es wieder?\nJa, danke.",
        "Am 12.03.24 um 10:15 schrieb Support:\n> Geht es wieder?\nJa, danke.",
    ),
    ("all-quote", "> nur Zitat\n> noch mehr\n", "> nur Zitat\n> noch mehr"),
    (
        "bare-forward",
        "---------- Forwarded message ---------\nFrom: A <a@b.de>\nDate: x\n\nHallo",
        "---------- Forwarded message ---------\nFrom: A <a@b.de>\nDate: x\n\nHallo",
    ),
    ("crlf-and-trailing-space", "Hallo\r\nWelt   \r\n\r\n", "Hallo\nWelt"),
    ("leading-blank-lines", "\n\n\nHallo\n", "Hallo"),
]

# The customer's own words that look like history: all must come back unchanged.
TRAPS: list[tuple[str, str]] = [
    ("on-in-prose", "On the other hand, we should wait.\nOn average it works.\n\nThanks"),
    ("sent-from-in-prose", "The notification was sent from my iPhone app to all users."),
    ("sent-from-my-sentence", "Here it is\n\nSent from my desk, is much easier than my phone."),
    (
        "gesendet-von-person",
        "Hallo,\n\nGesendet von Anna Schmidt im Auftrag von Herrn Meier.\nDanke",
    ),
    (
        "itinerary",
        "Meine Reise:\nVon: Berlin Hbf\nNach: München\nDatum: 12.03.2024\n\nBitte buchen.",
    ),
    ("from-in-body", "The data comes From: our database.\nFrom: here\n\nThat is all."),
    ("dash-list", "Punkte:\n-- erstens\n-- zweitens\n\nDanke"),
    (
        "i-wrote-list",
        "Am 12.03. habe ich geschrieben:\n- Drucker defekt\n- Scanner defekt\n\nGruß Anna",
    ),
    ("wrote-in-url", "See https://example.com/on-date-someone-wrote-about-parsing\n\nBye"),
    ("timestamps", "Log:\n2024-01-15 14:30:25\n15.01.2024 14:30\n\nBitte prüfen."),
    ("markdown-rules", "## Punkte\n----\n\n1. eins\n\n====\n\nEnde."),
    ("quote-then-answer", "> Ist das so?\n\nJa, genau so."),
    ("sent-by-mail-sentence", "Rechnung:\nGesendet per Mail am Montag\nBitte prüfen."),
    ("sent-via-mail-sentence", "Invoice:\nSent via mail yesterday\nPlease check."),
]

FORWARD_CASES: list[tuple[str, str, tuple[str, str] | None]] = [
    (
        "gmail",
        "FYI\n\n---------- Forwarded message ---------\nFrom: Anna Schmidt <Anna@Kunde.de>\n"
        "Date: Tue, 12 Mar 2024 at 10:15\nSubject: Drucker\nTo: <support@firma.de>\n\nHallo",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "gmail-de",
        "---------- Weitergeleitete Nachricht ---------\nVon: Anna Schmidt <anna@kunde.de>\n"
        "Date: Di., 12. März 2024 um 10:15 Uhr\nSubject: Drucker\nTo: <support@firma.de>\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "thunderbird-de",
        "-------- Weitergeleitete Nachricht --------\nBetreff: Drucker\n"
        "Datum: Tue, 12 Mar 2024 10:15:00 +0100\nVon: Anna <anna@kunde.de>\nAn: support@firma.de\n",
        ("Anna", "anna@kunde.de"),
    ),
    (
        "outlook-mailto",
        "-----Original Message-----\nFrom: Anna Schmidt [mailto:anna@kunde.de]\n"
        "Sent: Tuesday, March 12, 2024 10:15 AM\nTo: Support\nSubject: Printer\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "outlook-de",
        "-----Ursprüngliche Nachricht-----\nVon: Anna Schmidt <anna@kunde.de>\n"
        "Gesendet: Dienstag, 12. März 2024 10:15\nAn: Support\nBetreff: Drucker\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "outlook-bare-address",
        "-----Original Message-----\nFrom: anna@kunde.de\nSent: Tuesday\n",
        ("", "anna@kunde.de"),
    ),
    (
        "outlook-no-separator-bold",
        "Bitte übernehmen.\n\n*Von:* Schmidt, Anna <anna@kunde.de<mailto:anna@kunde.de>>\n"
        "*Gesendet:* Dienstag, 12. März 2024 10:15\n*An:* Support\n*Betreff:* Drucker\n",
        ("Schmidt, Anna", "anna@kunde.de"),
    ),
    (
        "apple",
        'Begin forwarded message:\n\nFrom: "Anna Schmidt" <anna@kunde.de>\nSubject: Drucker\n'
        "Date: 12 March 2024 at 10:15:00 CET\nTo: support@firma.de\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "apple-de-quoted",
        "Anfang der weitergeleiteten Nachricht:\n\n> Von: Anna Schmidt <anna@kunde.de>\n"
        "> Betreff: Drucker\n> Datum: 12. März 2024 um 10:15:00 MEZ\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "address-then-name",
        "---------- Forwarded message ---------\nFrom: anna@kunde.de (Anna Schmidt)\nDate: x\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "wrapped-address",
        "-----Original Message-----\nFrom: Anna Schmidt\n<anna@kunde.de>\nSent: x\nTo: y\n",
        ("Anna Schmidt", "anna@kunde.de"),
    ),
    (
        "html-entities",
        "---------- Forwarded message ---------\nFrom: Anna &lt;anna@kunde.de&gt;\nDate: x\n",
        ("Anna", "anna@kunde.de"),
    ),
    ("no-forward", "Hallo,\n\nder Drucker ist kaputt.\n\nGruß Anna", None),
    (
        "forward-without-address",
        "---------- Forwarded message ---------\nFrom: Anna Schmidt\nDate: x\n\nHallo",
        None,
    ),
    ("reply-attribution-is-not-a-forward", "Ok\n\nAm 12.03.2024 schrieb Anna <a@b.de>:\n> x", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in STRIP_CASES], ids=[c[0] for c in STRIP_CASES]
)
def test_strip_quoted(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected


@pytest.mark.parametrize("text", [t[1] for t in TRAPS], ids=[t[0] for t in TRAPS])
def test_customer_text_that_looks_like_history_is_kept(text: str) -> None:
    assert strip_quoted(text) == text.strip()


def test_blank_input_gives_empty_string() -> None:
    assert strip_quoted("") == ""
    assert strip_quoted(" \n\t\n") == ""


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES]
)
def test_forwarded_original(text: str, expected: tuple[str, str] | None) -> None:
    assert forwarded_original(text) == expected


_LINES = st.sampled_from(
    [
        "",
        "Hallo,",
        "> zitat",
        ">",
        "-- ",
        "--",
        "__",
        "Sent from my iPhone",
        "Am 12.03.2024 um 10:15 schrieb Anna <a@b.de>:",
        "On Tue, Mar 12, 2024 at 10:15 AM Anna <a@b.de>",
        "wrote:",
        "-----Original Message-----",
        "Von: Anna <a@b.de>",
        "Gesendet: Dienstag",
        "An: x",
        "<a@b.de>",
        "Text mit Inhalt.",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.text(max_size=30)), max_size=25))
def test_output_is_a_non_empty_part_of_the_input(lines: list[str]) -> None:
    """Whatever the input, nothing is invented and a non-blank input never yields ''."""
    text = "\n".join(lines)
    result = strip_quoted(text)
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert result in normalised
    assert bool(result.strip()) == bool(normalised.strip())
    assert result == result.rstrip()


# ----------------------------------------------------------------------------------------
# Corpus: email-reply-trimmer's real replies and their expected trimmed text
# ----------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def _over_stripped(expected: str, output: str) -> bool:
    """Whether words of the expected text are missing from the output."""
    matcher = difflib.SequenceMatcher(None, expected.split(), output.split(), autojunk=False)
    return any(tag in ("delete", "replace") for tag, *_ in matcher.get_opcodes())


@pytest.mark.skipif(not TRIMMER.is_dir(), reason=corpus_missing(TRIMMER))
def test_corpus_precision_and_no_lost_text() -> None:
    emails = sorted((TRIMMER / "emails").glob("*.txt"))
    assert emails, "email-reply-trimmer fixtures missing"
    exact = 0
    over: list[str] = []
    for path in emails:
        text = path.read_bytes().decode("utf-8")
        expected = _normalise((TRIMMER / "trimmed" / path.name).read_bytes().decode("utf-8"))
        output = _normalise(strip_quoted(text))
        if output == expected:
            exact += 1
        elif _over_stripped(expected, output):
            over.append(path.stem)
    rate = exact / len(emails)
    assert rate >= MIN_EXACT_RATE, f"exact match {exact}/{len(emails)} = {rate:.3f}"
    assert len(over) <= MAX_OVER_STRIPPED, f"customer text lost in {over}"


_ATTRIBUTION_PIECES = st.sampled_from(
    ["On", "Am", "Le", "2016-10-24", "15:36", "GMT+02:00", "12.03.2024", "Anna", "<a@b.de>",
     "wrote", "WROTE", "schrieb", "a écrit", "写道", ":", "：", " ", ",", "um", "Mon, 4 Jan"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_ATTRIBUTION_PIECES, st.text(max_size=4)), max_size=14), st.booleans())
def test_attribution_gate_only_skips_lines_no_rule_matches(pieces: list[str], quote: bool) -> None:
    """The cheap end/start check in front of the attribution regexes changes no decision."""
    from mailgate.quotes import _attribution, _attribution_evidence

    window = " ".join(pieces)
    text = window.strip().strip("-_*").strip()
    expected = bool(text) and len(text) <= 350 and _attribution_evidence(text, quote)
    assert _attribution(window, quote) == expected
