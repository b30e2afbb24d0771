"""Find and mask credentials that customers paste into support mail.

Customers send passwords, PINs, private keys and API tokens although they should not. Only the
raw stored message keeps the original; ticket comments and every notification must show the
text with those values masked. Missing a secret leaks it to every agent and mail inbox, while
masking a harmless word only costs readability, so where a rule has to guess it guesses
"secret" - except for labelled values that read as prose (see below).

Detected kinds (``Finding.kind``):

* ``password``: a label (``Passwort``, ``Kennwort``, ``password``, ``pw``, ``pass``, ``PIN``,
  ``Zugangsdaten`` …, also compounds like ``WLAN-Passwort``) followed by ``:``, ``=`` or
  ``lautet`` and a value. Only the value is masked, never the label.
* ``private_key``: a whole PEM ``PRIVATE KEY`` block; a block cut off without its ``END`` line
  is masked up to the end of the text.
* ``aws_key``, ``github_token``, ``slack_token``, ``stripe_key``, ``google_api_key``, ``jwt``,
  ``bearer_token``: well-known token shapes, wherever they appear.
* ``url_password``: the password of ``scheme://user:password@host`` (only that part).

Decision on labelled values that are several words: a secret is a single token. "Passwort:
bitte zurücksetzen lassen" or "Passwort: siehe Telefon" are requests, not passwords, so a value
is only the first whitespace-free token, and it is flagged when it is the last thing on its line
or contains a non-letter (``Passwort: Sommer2024 bitte ändern`` is flagged, ``Passwort: bitte
zurücksetzen`` is not). Exceptions: a quoted value (``Passwort: "mein geheimes wort"``) and the
``user / pass`` shape of ``Zugangsdaten`` are taken whole. Values shorter than three characters,
placeholders (only ``*``, ``•``, ``x``; or wrapped in ``<>``/``[]``/``{}``) and a small list of
words that describe the password's state (``vergessen``, ``abgelaufen``, ``reset`` …) are not
flagged. Trailing ``.,;:`` and closing quotes/brackets are sentence punctuation, not value;
``!`` and ``?`` stay in the value because they are common password characters.

Both public functions are pure and never raise for any ``str``. Masking is idempotent: the mask
itself is a placeholder, so masked text yields no new findings. Every pattern is bounded so the
scan stays linear on crafted bodies (a mail daemon must not hang on one message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MASK", "Finding", "find_secrets", "mask_secrets"]

MASK = "••••••"


@dataclass(frozen=True)
class Finding:
    """One secret value: ``text[start:end]`` is the value only (never the label)."""

    kind: str
    start: int
    end: int


# --------------------------------------------------------------------------------------
# Token shapes. Order matters only for equal spans: more specific kinds come first, so a JWT
# after "Bearer" is reported as ``jwt``.
# --------------------------------------------------------------------------------------

_PEM_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)",
    re.DOTALL,
)

# (kind, pattern, value group). The lookarounds stop a match inside a longer word.
_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("aws_key", re.compile(r"(?<![0-9A-Za-z])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"), 0),
    ("github_token", re.compile(r"(?<![0-9A-Za-z_])gh[pousr]_[A-Za-z0-9]{36,}"), 0),
    ("github_token", re.compile(r"(?<![0-9A-Za-z_])github_pat_[A-Za-z0-9_]{22,}"), 0),
    ("slack_token", re.compile(r"(?<![0-9A-Za-z_])xox[baprs]-[A-Za-z0-9-]{10,}"), 0),
    ("stripe_key", re.compile(r"(?<![0-9A-Za-z_])[sr]k_live_[A-Za-z0-9]{16,}"), 0),
    ("google_api_key", re.compile(r"(?<![0-9A-Za-z_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), 0),
    (
        "jwt",
        re.compile(r"(?<![0-9A-Za-z_-])eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
        0,
    ),
    ("bearer_token", re.compile(r"(?i:\bbearer)[ \t]+([A-Za-z0-9._~+/=-]{20,})"), 1),
    (
        "url_password",
        # The user part cannot hold "/", so "https://example.com/a:b@c" is no credential.
        re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/@]*:([^\s/@]+)@[^\s/@]"),
        1,
    ),
)
# Literals each token pattern cannot match without (the lowercase ones are looked for in the
# lowercased text). A plain substring test is a hundred times cheaper than a regex scan whose
# leading lookbehind defeats the regex engine's own prefix search, and almost every mail
# contains none of them, so most scans end here.
_TOKEN_LITERALS: tuple[tuple[str, ...], ...] = (
    ("AKIA", "ASIA"),
    ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ("github_pat_",),
    ("xox",),
    ("k_live_",),
    ("AIza",),
    ("eyJ",),
    ("bearer",),
    ("://",),
)
_LOWERCASE_LITERALS = frozenset({"bearer"})
# The non-ASCII letters that IGNORECASE matches to an ASCII letter ("Paſſwort", "PİN"): the
# prefilter's lowercased text must hold the ASCII letter there, as the regex would see it.
_IGNORECASE_TWINS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_TWIN_TABLE = str.maketrans(_IGNORECASE_TWINS)
# Every label in _LABEL_RE contains one of these, lowercased.
_LABEL_LITERALS = ("pass", "pw", "pin", "kennwort", "zugangsdaten")
_KIND_PRIORITY = {kind: i for i, (kind, _, _) in enumerate(_TOKEN_PATTERNS)}
_KIND_PRIORITY["private_key"] = -2
_KIND_PRIORITY["password"] = len(_KIND_PRIORITY)

# --------------------------------------------------------------------------------------
# Labelled values
# --------------------------------------------------------------------------------------

# Long labels may be the tail of a compound ("WLAN-Passwort", "Datenbankkennwort"), so they need
# no word start; short ones do, so "Bypass:" or "Camping:" do not count. "/" before a label
# would be part of a URL. No unbounded prefix here: it made the scan quadratic on long words.
_LABEL_RE = re.compile(
    r"(?:(?<!/)(?:passwort|passwörter|kennwort|password|passcode|zugangsdaten)"
    r"|(?<![\w/])(?:passwd|pwd|pw|pass|pin|pin-code|pincode))"
    r"[ \t]*(?:[:=]|[ \t]lautet:?)[ \t]*",
    re.IGNORECASE,
)
_QUOTED_RE = re.compile(r"\"([^\"\n]+)\"|'([^'\n]+)'|„([^“”\n]+)[“”]|»([^«\n]+)«")
_USER_PASS_RE = re.compile(r"\S+[ \t]+/[ \t]+\S+")
_TOKEN_RE = re.compile(r"\S+")
_TRAILING_PUNCT = ".,;:)]}\"'“”»«"
_PLACEHOLDER_RE = re.compile(r"[*•xX]+|<[^>]*>|\[[^\]]*\]|\{[^}]*\}|\([^)]*\)")
_MIN_VALUE_LEN = 3
# How far past a label the value rules look. Bounds the work per label so that a mail of many
# labels on one huge line stays linear; an unbroken token running past it is taken whole.
_WINDOW = 512
# Words that say something *about* the password rather than being it.
# fmt: off
_STATE_WORDS = frozenset([
    "vergessen", "zurücksetzen", "zurückgesetzt", "ändern", "geändert", "abgelaufen",
    "gesperrt", "falsch", "ungültig", "unbekannt", "fehlt", "fehlend", "keins", "keines", "kein",
    "keine", "leer", "siehe", "anbei", "folgt", "folgend", "neu", "alt", "erforderlich",
    "benötigt", "entfernt", "geschwärzt", "ja", "nein", "bitte", "danke",
    "forgotten", "forgot", "reset", "expired", "locked", "wrong", "invalid", "incorrect",
    "unknown", "missing", "none", "null", "empty", "see", "attached", "required", "changed",
    "change", "hidden", "redacted", "removed", "new", "old", "true", "false", "yes", "no",
    "please", "thanks",
])
# fmt: on


def _is_placeholder(value: str) -> bool:
    """Masked or templated values ("***", "<hidden>", our own MASK) carry no secret."""
    return _PLACEHOLDER_RE.fullmatch(value) is not None


def _labelled_value(text: str, pos: int) -> tuple[int, int] | None:
    """Span of the value that starts at ``pos`` (right after a label), or None for prose."""
    window_end = text.find("\n", pos, pos + _WINDOW)
    if window_end == -1:
        window_end = min(len(text), pos + _WINDOW)
    line = text[pos:window_end]
    # "(siehe Telefon)", "<wird nachgereicht>": a bracketed remark, not a value.
    if _is_placeholder(line.strip().rstrip(".,;:")):
        return None

    quoted = _QUOTED_RE.match(line)
    if quoted:
        group = next(i for i in range(1, 5) if quoted.group(i) is not None)
        start, end = quoted.span(group)
        value = quoted.group(group)
        ok = len(value.strip()) >= _MIN_VALUE_LEN and not _is_placeholder(value.strip())
        return (pos + start, pos + end) if ok else None

    match = _USER_PASS_RE.match(line) or _TOKEN_RE.match(line)
    if match is None:
        return None
    if match.end() == len(line) and window_end < len(text) and not text[window_end].isspace():
        # A token longer than the window is no word of prose: mask all of it.
        tail = _TOKEN_RE.match(text, window_end)
        token_end = tail.end() if tail else window_end
        value = text[pos:token_end].rstrip(_TRAILING_PUNCT)
        return pos, pos + len(value)
    value = match.group().rstrip(_TRAILING_PUNCT)
    rest = line[match.end() :].strip()
    if (
        len(value) < _MIN_VALUE_LEN
        or _is_placeholder(value)
        or value.casefold() in _STATE_WORDS
        # A letters-only word followed by more text reads as a sentence, not a password.
        or (rest and value.isalpha())
    ):
        return None
    return pos, pos + len(value)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def find_secrets(text: str) -> list[Finding]:
    """Return the secret value spans in ``text``, sorted and non-overlapping.

    Overlapping candidates (a URL password inside a labelled value, a JWT after "Bearer") are
    merged into one span rather than one being dropped, so no part of either leaks.
    """
    return _scan(text, prefilter=True)


def _scan(text: str, *, prefilter: bool) -> list[Finding]:
    """The scan itself; ``prefilter=False`` runs every pattern (tests prove both agree)."""
    candidates: list[tuple[int, int, str]] = []
    if not prefilter or "PRIVATE KEY" in text:
        for m in _PEM_RE.finditer(text):
            candidates.append((m.start(), m.end(), "private_key"))
    lowered = text.lower()
    if not text.isascii() and any(twin in text for twin in _IGNORECASE_TWINS):
        lowered = text.translate(_TWIN_TABLE).lower()
    # Seven of the literals hold a "_", which one fast search rules out for most texts.
    underscore = "_" in text
    for (kind, pattern, group), literals in zip(_TOKEN_PATTERNS, _TOKEN_LITERALS, strict=True):
        if prefilter and not any(
            lit in (lowered if lit in _LOWERCASE_LITERALS else text)
            for lit in literals
            if underscore or "_" not in lit
        ):
            continue
        for m in pattern.finditer(text):
            start, end = m.span(group)
            value = m.group(group)
            if kind == "bearer_token":
                # A sentence may end right after the token.
                end = start + len(value.rstrip("."))
                if end - start < 20:
                    continue
            if kind == "url_password" and _is_placeholder(value):
                continue
            candidates.append((start, end, kind))
    value_end = 0
    wanted = not prefilter or any(lit in lowered for lit in _LABEL_LITERALS)
    labels = _LABEL_RE.finditer(text) if wanted else ()
    for m in labels:
        if m.start() < value_end:
            continue  # "pw:pw:pw:…" inside an accepted value; re-checking it is quadratic
        span = _labelled_value(text, m.end())
        if span is not None:
            candidates.append((*span, "password"))
            value_end = span[1]

    candidates.sort(key=lambda c: (c[0], -c[1], _KIND_PRIORITY[c[2]]))
    merged: list[Finding] = []
    for start, end, kind in candidates:
        if merged and start < merged[-1].end:
            last = merged[-1]
            if end > last.end:
                merged[-1] = Finding(last.kind, last.start, end)
            continue
        merged.append(Finding(kind, start, end))
    return merged


def mask_secrets(text: str) -> tuple[str, list[Finding]]:
    """Replace every secret value by ``MASK``; all other characters stay byte-identical.

    The findings refer to positions in the *original* text, which the raw stored message keeps.
    """
    findings = find_secrets(text)
    parts: list[str] = []
    pos = 0
    for finding in findings:
        parts.append(text[pos : finding.start])
        parts.append(MASK)
        pos = finding.end
    parts.append(text[pos:])
    return "".join(parts), findings
