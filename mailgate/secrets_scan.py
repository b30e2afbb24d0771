"""Find and mask credentials that customers paste into support mail.

Customers send passwords, PINs, private keys and API tokens although they should not. Only the
raw stored message keeps the original; ticket comments and every notification must show the
text with those values masked. Missing a secret leaks it to every agent and mail inbox, while
masking a harmless word only costs readability, so where a rule has to guess it guesses
"secret" - except for labelled values that read as prose (see below).

Detected kinds (``Finding.kind``):

* ``password``: a label (``Passwort``, ``Kennwort``, ``password``, ``pw``, ``pass``, ``PIN``,
  ``Geheimzahl``, ``Zugangsdaten``, ``credentials`` …, also compounds like ``WLAN-Passwort``
  or ``DB_PASSWORD``) and its value; a "user / password" pair after a word that means a login
  ("Login anna / Xk9#mmQ2pL": the password only). Only the value is masked, never the label.
* ``api_key``: the value of a config key or code name (``aws_secret_access_key = …``,
  ``API-Key: …``, ``AccountKey=…``, ``client_secret``), and ``sk-…`` keys.
* ``private_key``: a whole PEM ``PRIVATE KEY`` block (also PGP's ``PRIVATE KEY BLOCK``); a
  block cut off without its ``END`` line is masked up to the end of the text; PuTTY's
  ``Private-Lines``.
* provider token shapes wherever they appear, and ``url_password`` (the password of
  ``scheme://user:password@host``), ``netrc_password``, ``pgpass_password``,
  ``password_hash`` (htpasswd, shadow): see ``mailgate/secrets_rules.py``.

How sure a label's separator makes us decides what counts as its value:

* strong (``:``, ``=``, ``->``, `` - ``, ``lautet``, ``ist:``): the next token, or a quoted
  value, or a "user / pass"; a letters-only word followed by more text reads as a sentence
  ("Passwort: bitte zurücksetzen lassen"), so it is not flagged. Nothing after it on the line:
  the value is on the next non-blank line ("Passwort:\nGeheim!2026"); a block label
  ("Zugangsdaten:") takes up to three one-token lines below it (user name and password).
* weak (``ist``, ``is``, ``to``) and bare (a space: "pw Geheim!2026"): "Das Passwort ist
  abgelaufen" is prose as often as not, so only a value that looks made up counts: letters
  with a digit or a symbol (a hyphen or an apostrophe is no symbol: "case-sensitive"), or a
  number of four digits or more after "ist"/"is" (a PIN). One filler word may come between
  ("ist jetzt …"), and so may "für den Server" between label and separator.
* config keys need eight characters or more, with a digit unless sixteen or more.

Values shorter than three characters, placeholders (only ``*``, ``•``, ``x``; wrapped in
``<>``/``[]``/``{}``/``{{}}``; ``${VAR}``, ``$VAR``) and words that describe the password's
state (``vergessen``, ``abgelaufen``, ``reset`` …) are never flagged. Trailing ``.,;:`` and
closing quotes/brackets are sentence punctuation, not value; ``!`` and ``?`` stay in the
value because they are common password characters.

Measured on the labelled set ``bench/secrets/`` (``bench/secrets_eval.py``); its figures are
floors in ``tests/test_secrets_eval.py``. An IBAN, an order number or a commit SHA is no
credential and must come through untouched.

Both public functions are pure and never raise for any ``str``. Masking is idempotent: the mask
itself is a placeholder, so masked text yields no new findings. Every pattern is bounded so the
scan stays linear on crafted bodies (a mail daemon must not hang on one message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.secrets_rules import (
    GATE_CHARS,
    LITERAL_GATES,
    LOWERCASE_LITERALS,
    PEM_RE,
    TOKEN_RULES,
)

__all__ = ["MASK", "Finding", "find_secrets", "mask_secrets"]

MASK = "••••••"


@dataclass(frozen=True)
class Finding:
    """One secret value: ``text[start:end]`` is the value only (never the label)."""

    kind: str
    start: int
    end: int


_IGNORECASE_TWINS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_TWIN_TABLE = str.maketrans(_IGNORECASE_TWINS)
_KIND_PRIORITY = {"private_key": -2}
for _rule in TOKEN_RULES:
    _KIND_PRIORITY.setdefault(_rule.kind, len(_KIND_PRIORITY))
_KIND_PRIORITY["password"] = len(_KIND_PRIORITY)

# --------------------------------------------------------------------------------------
# Labelled values
# --------------------------------------------------------------------------------------

# Long labels may be the tail of a compound ("WLAN-Passwort", "Datenbankkennwort",
# "DB_PASSWORD"), so they need no word start; short ones do, so "Bypass:" or "Camping:" do
# not count. "/" before a label would be part of a URL. No unbounded prefix here: it made the
# scan quadratic on long words. The block labels announce a user and a password, possibly on
# the lines below.
_LABEL = (
    r"(?:(?<!/)(?:passwort|passwörter|kennwort|password|passcode|passphrase|geheimzahl"
    r"|(?:wlan|wifi|wi-fi|wpa2?|netzwerk)[ -]?(?:key|schlüssel)|(?:bind|root|admin|master)pw"
    r"|(?P<block>zugangsdaten|anmeldedaten|logindaten|credentials|login[ \t]details))"
    r"|(?<![A-Za-z0-9/])(?:passwd|pwd|pw|pass|pin|pin-code|pincode|psk))"
)
# "Das Passwort für den Server ist …", "the password of the shared mailbox is …".
_FILLER = (
    r"[ \t]+(?:für|fürs|fuer|vom|von|zum|zur|des|der|beim|im|for|of|to|on)"
    r"(?:[ \t]+[^\s:=\"'„“]{1,30}){1,3}?"
)
# Strong: "Passwort: X", "= X", "-> X", "<password>X", "| X" (a table), " - X", "lautet X",
# "ist: X".
_VERBS = r"(?:lautet|lauten|lautete|ist|is|are|sind|war|wäre|was|wird)"
_STRONG = (
    r"[\"'\]]?[ \t]*(?:[:=|]|->|=>|>)|[ \t]+[-–][ \t]"
    rf"|[ \t]+{_VERBS}(?:[ \t]+(?:wie[ \t]+folgt|as[ \t]+follows))?[ \t]*:|[ \t]+lautet(?!\w)"
)
# Weak: "Das Passwort ist X", "the password is X": prose as often as not.
_WEAK = rf"[ \t]+(?:{_VERBS}|to|auf)(?!\w)"
# "Password (new): …", "Passwort (Admin) = …".
_QUALIFIER = r"(?:[ \t]*\([^()\n]{1,30}\))?"
_LABEL_RE = re.compile(
    _LABEL + _QUALIFIER + rf"(?:(?:{_FILLER})(?:(?P<strong1>{_STRONG})|(?P<weak1>{_WEAK}))"
    rf"|(?P<strong>{_STRONG})|(?P<weak>{_WEAK})|(?P<eol>[ \t]*(?=\r?\n))|(?P<bare>[ \t]+))"
    r"[ \t]*",
    re.IGNORECASE,
)
# Keys of config files and code: "aws_secret_access_key = …", "API-Key: …", "AccountKey=…".
_KEY_RE = re.compile(
    r"(?:secret|token|api[_ -]?key|apikey|access[_ -]?key|account[_ -]?key|(?<=_)key"
    r"|(?:zugriffs|api[_ -]?|geheimer[ \t])schlüssel)"
    r"(?:[_ .-]?(?:access|key|id|token|value)){0,3}"
    rf"(?:{_FILLER})?"
    r"(?:[\"'\]]?[ \t]*(?:[:=]|->|=>)|[ \t]+(?:lautet|lauten|ist|is)(?!\w)[ \t]*:?)[ \t]*",
    re.IGNORECASE,
)
# Every label in _LABEL_RE contains one of these, lowercased; every key in _KEY_RE one of those.
_LABEL_LITERALS = (
    "pass", "pw", "pin", "kennwort", "geheimzahl", "zugangsdaten", "anmeldedaten",
    "credentials", "login", "psk", "wlan", "wifi", "wi-fi", "wpa", "netzwerk",
)  # fmt: skip
_KEY_LITERALS = ("secret", "token", "key", "schlüssel")
# "Login anna / Xk9#mmQ2pL": a user and a password after a word that announces a login.
_PAIR_RE = re.compile(r"(?<!\S)([^\s/]{1,64})([ \t]*)/([ \t]*)([^\s/]{4,128})(?!\S)")
_LOGIN_RE = re.compile(
    r"\b(?:login|log[ \t]in|logg|zugang|anmeld|account|credentials|creds|benutzer|user|konto)",
    re.IGNORECASE,
)
_LOGIN_LITERALS = ("log", "zugang", "anmeld", "account", "cred", "benutzer", "user", "konto")
_QUOTED_RE = re.compile(r"\"([^\"\n]+)\"|'([^'\n]+)'|„([^“”\n]+)[“”]|»([^«\n]+)«")
_USER_PASS_RE = re.compile(r"\S+[ \t]+/[ \t]+\S+")
_TOKEN_RE = re.compile(r"\S+")
_TRAILING_PUNCT = ".,;:)]}\"'“”»«"
_PLACEHOLDER_RE = re.compile(
    r"[*•xX]+|<[^>]*>|\[[^\]]*\]|\{\{[^}]*\}\}|\{[^}]*\}|\([^)]*\)|\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*"
)
# "16-stellig", "8-digit", "2026-12-12", "31.12.2026": a description or a date, no secret.
_NOT_A_VALUE_RE = re.compile(r"\d{1,3}[-–][^\W\d_]+|\d{1,4}[-./]\d{1,2}[-./]\d{1,4}(?:T[\d:.]+Z?)?")
_MIN_VALUE_LEN = 3
# How far past a label the value rules look. Bounds the work per label so that a mail of many
# labels on one huge line stays linear; an unbroken token running past it is taken whole.
_WINDOW = 512
# Lines a block label ("Zugangsdaten:") takes from below it: user, password and one spare.
_BLOCK_LINES = 3
# Words that say something *about* the password rather than being it.
# fmt: off
_STATE_WORDS = frozenset([
    "vergessen", "zurücksetzen", "zurückgesetzt", "ändern", "geändert", "abgelaufen",
    "gesperrt", "falsch", "ungültig", "unbekannt", "fehlt", "fehlend", "keins", "keines", "kein",
    "keine", "leer", "siehe", "anbei", "folgt", "folgend", "neu", "alt", "erforderlich",
    "benötigt", "entfernt", "geschwärzt", "ja", "nein", "bitte", "danke", "nicht",
    "forgotten", "forgot", "reset", "expired", "locked", "wrong", "invalid", "incorrect",
    "unknown", "missing", "none", "null", "empty", "see", "attached", "required", "changed",
    "change", "hidden", "redacted", "removed", "new", "old", "true", "false", "yes", "no",
    "please", "thanks", "not",
])
# Words between a label and its value: "Das Passwort ist jetzt X", "is now X".
_SKIPPED_WORDS = frozenset([
    "jetzt", "nun", "now", "also", "dann", "then", "einfach", "simply", "übrigens", "wieder",
    "again", "noch", "still", "weiterhin", "aktuell", "currently", "btw",
])
# fmt: on


def _is_placeholder(value: str) -> bool:
    """Masked or templated values ("***", "<hidden>", "${DB_PASSWORD}", our MASK): no secret."""
    return _PLACEHOLDER_RE.fullmatch(value) is not None


def _looks_like_password(value: str, *, digits_only: bool) -> bool:
    """A value after a weak separator ("ist", a space) must look made up, not like a word.

    "Tr0ub4dor&3", "Hunter2hunter", "Gast-Netz-2026" do; "abgelaufen", "case-sensitive",
    "12" do not. A bare number counts only where the label allows it (a PIN after "ist").
    """
    if len(value) < 4 or "://" in value or value.lower().startswith("www."):
        return False
    if value.isdigit():
        return digits_only
    letters = any(c.isalpha() for c in value)
    marks = any(c.isdigit() or not (c.isalnum() or c in "-'’.") for c in value)
    return letters and marks


def _line_end(text: str, pos: int) -> int:
    """End of the line at ``pos``, at most ``_WINDOW`` characters on."""
    end = text.find("\n", pos, pos + _WINDOW)
    return min(len(text), pos + _WINDOW) if end == -1 else end


def _labelled_value(text: str, pos: int, mode: str, *, skip: bool = True) -> tuple[int, int] | None:
    """Span of the value that starts at ``pos`` (right after a label), or None for prose.

    ``mode`` is the separator's strength: ``strong`` (":", "=", "lautet"), ``key`` (a config
    key: longer values only), ``weak`` ("ist", "is") or ``bare`` (a space): after the last two
    only a made-up looking value counts.
    """
    window_end = _line_end(text, pos)
    line = text[pos:window_end]
    # "(siehe Telefon)", "<wird nachgereicht>": a bracketed remark, not a value.
    if _is_placeholder(line.strip().rstrip(".,;:")):
        return None

    quoted = _QUOTED_RE.match(line)
    if quoted:
        group = next(i for i in range(1, 5) if quoted.group(i) is not None)
        start, end = quoted.span(group)
        value = quoted.group(group).strip()
        ok = (
            len(value) >= _MIN_VALUE_LEN
            and not _is_placeholder(value)
            and value.casefold() not in _STATE_WORDS
            # after "ist"/"is" several words in quotes are a passphrase only if made up
            and (
                mode in ("strong", "key")
                or not any(c.isspace() for c in value)
                or _looks_like_password("".join(value.split()), digits_only=False)
            )
        )
        return (pos + start, pos + end) if ok else None

    match = (_USER_PASS_RE.match(line) if mode == "strong" else None) or _TOKEN_RE.match(line)
    if match is None:
        return None
    if match.end() == len(line) and window_end < len(text) and not text[window_end].isspace():
        # A token longer than the window is no word of prose: mask all of it.
        tail = _TOKEN_RE.match(text, window_end)
        token_end = tail.end() if tail else window_end
        value = text[pos:token_end].rstrip(_TRAILING_PUNCT)
        return pos, pos + len(value)
    value = match.group().rstrip(_TRAILING_PUNCT)
    if skip and value.casefold() in _SKIPPED_WORDS and mode != "key":
        # "ist jetzt X": look once more (only once), past the filler word.
        nxt = _TOKEN_RE.search(line, match.end())
        if nxt is None:
            return None
        return _labelled_value(text, pos + nxt.start(), mode, skip=False)
    rest = line[match.end() :].strip()
    if (
        len(value) < _MIN_VALUE_LEN
        or _is_placeholder(value)
        or value.casefold() in _STATE_WORDS
        or _NOT_A_VALUE_RE.fullmatch(value)
    ):
        return None
    if mode == "strong":
        # A letters-only word followed by more text reads as a sentence, not a password.
        ok = not (rest and value.isalpha())
    elif mode == "key":
        ok = (
            len(value) >= 8
            and (len(value) >= 16 or any(c.isdigit() for c in value))
            and not (rest and value.isalpha())
        )
    else:
        ok = _looks_like_password(value, digits_only=mode == "weak")
    return (pos, pos + len(value)) if ok else None


def _next_line(text: str, pos: int) -> int | None:
    """Start of the first non-blank line after ``pos`` (one blank line may come between),
    past any quote marks."""
    for _ in range(2):
        newline = text.find("\n", pos, pos + _WINDOW)
        if newline == -1:
            return None
        pos = newline + 1
        end = _line_end(text, pos)
        # "> " marks a quoted line: "> Passwort:\n> Geheim!2026" in a reply.
        content = text[pos:end].lstrip(" \t>")
        if content.strip():
            return end - len(content)
    return None


def _values_below(text: str, pos: int, mode: str, block: bool) -> list[tuple[int, int]]:
    """Values on the lines under a label that ends its line ("Passwort:\\nGeheim!2026").

    A block label ("Zugangsdaten:") takes up to three lines that are one token each, or a
    "user / password" line: the user name and the password below it.
    """
    start = _next_line(text, pos)
    if start is None:
        return []
    if not block:
        span = _labelled_value(text, start, "bare" if mode in ("eol", "weak") else mode)
        return [] if span is None else [span]
    spans: list[tuple[int, int]] = []
    for _ in range(_BLOCK_LINES):
        end = _line_end(text, start)
        line = text[start:end].rstrip()
        value = line.lstrip(" \t>")
        if not value:
            break
        if (
            any(c.isspace() for c in value) and _USER_PASS_RE.fullmatch(value) is None
        ) or value.rstrip(":").casefold() in _STATE_WORDS:
            break
        if not _is_placeholder(value.rstrip(_TRAILING_PUNCT)):
            offset = start + len(line) - len(value)
            spans.append((offset, offset + len(value)))
        if end >= len(text) or text[end] != "\n":
            break
        start = end + 1
    return spans


def _pair_values(text: str) -> list[tuple[int, int]]:
    """The passwords of "Login anna / Xk9#mmQ2pL": a pair after a word that means a login.

    Only the password is masked; the user name helps the agent. Without spaces round the
    slash it must hold a symbol, and the user no dot: "Gruppe Admins/Support12" and
    "portal.example.com/login2026" are a path and a host.
    """
    spans = []
    for m in _PAIR_RE.finditer(text):
        user, password = m.group(1), m.group(4).rstrip(_TRAILING_PUNCT)
        if not (m.group(2) or m.group(3)) and ("." in user or ":" in user or password.isalnum()):
            continue  # "Admins/Support12", "12345/ABC123": a path or a number, not a login
        if user.endswith(":") or not _looks_like_password(password, digits_only=False):
            continue
        if len(password) < 6 or _is_placeholder(password):
            continue
        line_start = text.rfind("\n", max(0, m.start() - 120), m.start()) + 1
        lead = text[max(line_start, m.start() - 120) : m.start()]
        if _LOGIN_RE.search(lead):
            spans.append((m.start(4), m.start(4) + len(password)))
    return spans


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def find_secrets(text: str) -> list[Finding]:
    """Return the secret value spans in ``text``, sorted and non-overlapping.

    Overlapping candidates (a URL password inside a labelled value, a JWT after "Bearer") are
    merged into one span rather than one being dropped, so no part of either leaks.
    """
    return _scan(text, prefilter=True)


def _token_findings(text: str, lowered: str, prefilter: bool) -> list[tuple[int, int, str]]:
    """Candidates of the shapes found anywhere: key blocks, provider tokens, config lines."""
    candidates: list[tuple[int, int, str]] = []
    if not prefilter or "PRIVATE KEY" in text:
        for m in PEM_RE.finditer(text):
            candidates.append((m.start(), m.end(), "private_key"))
    present = frozenset(c for c in GATE_CHARS if c in text)
    for rule in TOKEN_RULES:
        if prefilter and not any(
            LITERAL_GATES[lit] <= present
            and lit in (lowered if lit in LOWERCASE_LITERALS else text)
            for lit in rule.literals
        ):
            continue
        for m in rule.pattern.finditer(text):
            start, end = m.span(rule.group)
            value = m.group(rule.group)
            if rule.kind == "bearer_token":
                # A sentence may end right after the token.
                end = start + len(value.rstrip("."))
                if end - start < 20:
                    continue
            elif rule.kind == "api_key" and not any(c.isdigit() for c in value):
                continue  # "sk-" words of prose ("task-list-…") have no digit
            elif rule.kind == "pgpass_password":
                host = m.group().split(":", 1)[0].strip()
                if host != "*" and not any(c.isalpha() or c == "." for c in host):
                    continue  # "00:11:22:33:44:55" is a MAC address
            elif rule.kind in ("url_password", "netrc_password") and _is_placeholder(value):
                continue
            candidates.append((start, end, rule.kind))
    return candidates


def _label_findings(text: str, lowered: str, prefilter: bool) -> list[tuple[int, int, str]]:
    """Candidates that a label announces: passwords, config keys, "user / password" pairs."""
    candidates: list[tuple[int, int, str]] = []
    value_end = 0
    wanted = not prefilter or any(lit in lowered for lit in _LABEL_LITERALS)
    for m in _LABEL_RE.finditer(text) if wanted else ():
        if m.start() < value_end:
            continue  # "pw:pw:pw:…" inside an accepted value; re-checking it is quadratic
        mode = next(
            name.rstrip("1")
            for name in ("strong1", "weak1", "strong", "weak", "eol", "bare")
            if m.group(name) is not None
        )
        line_end = _line_end(text, m.end())
        if mode in ("strong", "weak", "eol") and not text[m.end() : line_end].strip():
            spans = _values_below(text, m.end(), mode, m.group("block") is not None)
        else:
            # "PIN 4471": a bare number is a value after a PIN's label, not after others.
            pin = mode == "bare" and m.group().lstrip().lower().startswith(("pin", "geheimzahl"))
            span = _labelled_value(text, m.end(), "weak" if pin else mode)
            spans = [] if span is None else [span]
        for span in spans:
            candidates.append((*span, "password"))
            value_end = max(value_end, span[1])
    value_end = 0  # the keys are a second pass over the text
    wanted = not prefilter or any(lit in lowered for lit in _KEY_LITERALS)
    for m in _KEY_RE.finditer(text) if wanted else ():
        if m.start() < value_end:
            continue
        span = _labelled_value(text, m.end(), "key")
        if span is not None:
            candidates.append((*span, "api_key"))
            value_end = span[1]
    if not prefilter or ("/" in text and any(lit in lowered for lit in _LOGIN_LITERALS)):
        candidates.extend((*span, "password") for span in _pair_values(text))
    return candidates


def _scan(text: str, *, prefilter: bool) -> list[Finding]:
    """The scan itself; ``prefilter=False`` runs every pattern (tests prove both agree)."""
    lowered = text.lower()
    if not text.isascii() and any(twin in text for twin in _IGNORECASE_TWINS):
        lowered = text.translate(_TWIN_TABLE).lower()
    candidates = _token_findings(text, lowered, prefilter)
    candidates += _label_findings(text, lowered, prefilter)
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
