"""Credential masking (``find_secrets`` / ``mask_secrets``).

The table pins each detected kind in the German and English shapes customers send, plus the
false-positive traps: prose about passwords, times, plain URLs, addresses and ticket tags must
come through untouched, because masking them would garble the customer's words for agents.
The properties pin what callers rely on: no exception for any input, idempotence (mail is
re-rendered from already masked comments) and that no found value survives masking.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.secrets_scan import (
    _IGNORECASE_TWINS,
    MASK,
    Finding,
    _scan,
    find_secrets,
    mask_secrets,
)

# Fake credentials, built at runtime so secret scanners on this repository stay quiet.
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SLACK = "xoxb-" + "123456789012-abcdefABCDEF"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_R = "rk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
GOOGLE = "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
JWT = "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NSJ9.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
BEARER = "abcdefghijklmnop0123456789"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n"
    "-----END RSA PRIVATE KEY-----"
)

# (text, expected [(kind, value)]); the value is what must disappear.
CASES: list[tuple[str, list[tuple[str, str]]]] = [
    # --- labelled values, German
    ("Passwort: geheim123", [("password", "geheim123")]),
    ("Mein Passwort:geheim", [("password", "geheim")]),
    ("Kennwort = x7!kQ", [("password", "x7!kQ")]),
    ("WLAN-Passwort: Sommer2024.", [("password", "Sommer2024")]),
    ("Das Passwort lautet Fr34k!", [("password", "Fr34k!")]),
    ("PIN: 1234", [("password", "1234")]),
    ("Zugangsdaten: mmuster / Hallo123", [("password", "mmuster / Hallo123")]),
    ('Passwort: "mein geheimes wort"', [("password", "mein geheimes wort")]),
    ("Benutzer: max\nPasswort: Sommer2024 bitte ändern", [("password", "Sommer2024")]),
    ("Hallo,\n\nPW = abc%def;\n\nGruß", [("password", "abc%def")]),
    # --- labelled values, English
    ("password: hunter2", [("password", "hunter2")]),
    ("Password=correcthorse", [("password", "correcthorse")]),
    ("pw: s3cret", [("password", "s3cret")]),
    ("user: bob pass: Tr0ub4dor", [("password", "Tr0ub4dor")]),
    # --- PEM
    (f"Hier der Key:\n{PEM}\nDanke", [("private_key", PEM)]),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n(abgeschnitten)",
        [("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n(abgeschnitten)")],
    ),
    # --- token shapes
    (f"aws_access_key_id {AWS} bitte prüfen", [("aws_key", AWS)]),
    (f"Token {GITHUB}", [("github_token", GITHUB)]),
    (f"Slack-Bot {SLACK}.", [("slack_token", SLACK)]),
    (f"Stripe: {STRIPE} und {STRIPE_R}", [("stripe_key", STRIPE), ("stripe_key", STRIPE_R)]),
    (f"key={GOOGLE}", [("google_api_key", GOOGLE)]),
    (f"Cookie {JWT}", [("jwt", JWT)]),
    (f"Authorization: Bearer {BEARER}.", [("bearer_token", BEARER)]),
    (f"Authorization: Bearer {JWT}", [("jwt", JWT)]),
    # --- URLs with password
    ("DB: postgresql://app:S3cr3t@db:5432/x", [("url_password", "S3cr3t")]),
    ("ftp://u:p@h", [("url_password", "p")]),
    ("siehe https://user:pw@host/ danke", [("url_password", "pw")]),
    ("redis://:topsecret@cache:6379", [("url_password", "topsecret")]),
    # --- the phrasings of issue #20 that went through unmasked
    ("Das Passwort ist geheim123", [("password", "geheim123")]),
    ("Mein Passwort ist Sommer2026!", [("password", "Sommer2026!")]),
    ("The password is Tr0ub4dor&3.", [("password", "Tr0ub4dor&3")]),
    ("PW ist Hunter2hunter", [("password", "Hunter2hunter")]),
    ("pw Geheim!2026", [("password", "Geheim!2026")]),
    ("Login anna / Xk9#mmQ2pL", [("password", "Xk9#mmQ2pL")]),
    (f"aws_secret_access_key = {AWS_SECRET}", [("api_key", AWS_SECRET)]),
    ("Passwort:\nGeheim!2026\n", [("password", "Geheim!2026")]),
    ("Zugangsdaten:\nanna\nXk9#mmQ2pL\n\nGruß", [("password", "anna"), ("password", "Xk9#mmQ2pL")]),
    ("> Passwort:\n> Geheim!2026", [("password", "Geheim!2026")]),
    ("Das Passwort für den Server ist Srv#4477", [("password", "Srv#4477")]),
    ("Router-PIN 4471", [("password", "4471")]),
    # --- files customers paste
    ("machine h login u password hunter", [("netrc_password", "hunter")]),
    ("db.example.com:5432:shop:app:Pg$hop", [("pgpass_password", "Pg$hop")]),
    (
        "anna:$apr1$Kx9mmQ2p$Zr0mYbZ3y5d6eQv0wR1pB/",
        [("password_hash", "$apr1$Kx9mmQ2p$Zr0mYbZ3y5d6eQv0wR1pB/")],
    ),
    # --- false-positive traps
    ("Das Passwort ist abgelaufen", []),
    ("The password is case-sensitive.", []),
    ("Kennwort-Richtlinie: mindestens 12 Zeichen", []),
    ("Ich habe mein Passwort geändert.", []),
    ("Login / Logout geht nicht, siehe portal.example.com/login2026", []),
    ("MAC 00:11:22:33:44:55\n00:11:22:33:44:55", []),
    ("  password: ${DB_PASSWORD}", []),
    ("Commit 9fceb02d0ae598e95dc970b74767f19372d61af8, IBAN DE89370400440532013000", []),
    ("Ich habe mein Passwort vergessen.", []),
    ("Please send me a password reset link", []),
    ("Passwort: bitte zurücksetzen lassen", []),
    ("Passwort: vergessen", []),
    ("Passwort: (siehe Telefon)", []),
    ("Password: ********", []),
    ("Kennwort: <hidden>", []),
    ("PIN: 12", []),
    ("Passwort:", []),
    ("Termin morgen um 10:30, Rückruf 14:00", []),
    ("Siehe https://example.com/a:b und https://example.com:8443/x", []),
    ("Mail an support@example.de oder max.mustermann@firma.de", []),
    ("Re: [Ticket#2024031210000123] Login geht nicht", []),
    ("Bypass: aktiviert, Camping: ja", []),
    (f"ftp://u:{MASK}@h und Passwort: {MASK}", []),
    ("Die Bearer-Token-Doku ist unklar", []),
]


def _values(text: str, findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in findings]


def _reassemble(text: str, findings: list[Finding]) -> str:
    out, pos = [], 0
    for f in findings:
        out += [text[pos : f.start], MASK]
        pos = f.end
    return "".join([*out, text[pos:]])


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_table(text: str, expected: list[tuple[str, str]]) -> None:
    findings = find_secrets(text)
    assert _values(text, findings) == expected
    masked, masked_findings = mask_secrets(text)
    assert masked_findings == findings
    assert masked == _reassemble(text, findings)
    for _, value in expected:
        if len(value) >= 3:  # "p" of ftp://u:p@h is also in "ftp"
            assert value not in masked


def test_masking_keeps_everything_else_byte_identical() -> None:
    text = (
        "Hallo Team,\r\n\r\nunser Zugang:\r\n  Benutzer: admin\r\n  Passwort: Xy9!pq\r\n"
        f"DB postgresql://app:S3cr3t@db:5432/x\tund {AWS}\r\nGrüße 😀"
    )
    masked, findings = mask_secrets(text)
    assert masked == (
        "Hallo Team,\r\n\r\nunser Zugang:\r\n  Benutzer: admin\r\n  Passwort: ••••••\r\n"
        "DB postgresql://app:••••••@db:5432/x\tund ••••••\r\nGrüße 😀"
    )
    assert [f.kind for f in findings] == ["password", "url_password", "aws_key"]


def test_overlapping_candidates_are_merged_not_dropped() -> None:
    # The label value and the URL password overlap; the union is masked.
    text = "Passwort: https://u:Geheim99@host"
    masked, findings = mask_secrets(text)
    assert masked == f"Passwort: {MASK}"
    assert findings == [Finding("password", 10, len(text))]


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "Passwort", "Kennwort", "password", "pw", "PIN", "Zugangsdaten", "Bearer", "lautet",
        ":", "=", " ", " ", "\n", "/", "@", "://", "ftp", "https", "u", ".", ",", "\"", "(",
        ")", "*", "•", MASK, "x", "bitte", "vergessen", "10:30", "-----BEGIN RSA PRIVATE KEY"
        "-----", "-----END RSA PRIVATE KEY-----", "eyJ", "AKIA", "sk_live_",
    ]
)  # fmt: skip
_SECRET = st.text("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=6)
_STRUCTURED = st.lists(st.one_of(_PIECES, _SECRET, st.text(max_size=5)), max_size=30).map("".join)
_ANY_TEXT = st.one_of(st.text(), _STRUCTURED)


_CASE_PIECES = st.sampled_from(
    ["PASSWORT", "paſſwort", "PaSs", "KENNWORT", "BEARER ", "bEaReR ", "Pw", "pİn", "ghp_",
     "github_pat_", "xoxb-", "AIza", "rk_live_", "ASIA", "K", "ß", " ist ", " is ", "Login ",
     " / ", "ſecret", "TOKEN", "_KEY", "Authorization: ", "token ", "machine ", " password ",
     "Zugangsdaten", "credentialſ", "WLAN-Key", "Netzwerkſchlüssel", "Wi-Fi key",
     "\n", "> ", ":5432:", "$apr1$", "sk-", "glpat-", "sig="]
)  # fmt: skip
_PREFILTER_TEXT = st.lists(
    st.one_of(_PIECES, _CASE_PIECES, _SECRET, st.text(max_size=5)), max_size=30
).map("".join)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_ANY_TEXT, _PREFILTER_TEXT))
def test_literal_prefilter_never_changes_the_findings(text: str) -> None:
    """Skipping patterns whose literals are absent is only a shortcut, never a blind spot."""
    assert find_secrets(text) == _scan(text, prefilter=False)


@pytest.mark.parametrize("label", ["Pa\u017f\u017fwort", "P\u0130N", "p\u0131n", "\u212aENNWORT"])
def test_prefilter_keeps_unicode_case_variants_of_labels(label: str) -> None:
    # IGNORECASE lets "ſ" match "s", "İ"/"ı" match "i" and the Kelvin sign match "k".
    text = f"{label}: Geheim123"
    assert find_secrets(text) == _scan(text, prefilter=False) != []


def test_prefilter_knows_every_non_ascii_letter_ignorecase_matches_to_ascii() -> None:
    twins = {
        chr(c)
        for c in range(0x80, 0x110000)
        if re.fullmatch("[a-z]", chr(c), re.IGNORECASE) and not chr(c).isascii()
    }
    assert twins == set(_IGNORECASE_TWINS)


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_mask_is_total_idempotent_and_exact(text: str) -> None:
    masked, findings = mask_secrets(text)
    prev_end = 0
    for f in findings:
        assert prev_end <= f.start < f.end <= len(text)
        prev_end = f.end
    assert masked == _reassemble(text, findings)
    assert mask_secrets(masked)[0] == masked


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_masked_text_never_contains_a_found_value(text: str) -> None:
    masked, findings = mask_secrets(text)
    # The unmasked stretches of the original; a value may legitimately appear there as an
    # ordinary word ("p" of "ftp://u:p@h" inside "ftp"), which masking must not touch.
    starts = [0] + [f.end for f in findings]
    ends = [f.start for f in findings] + [len(text)]
    kept = [text[a:b] for a, b in zip(starts, ends, strict=True)]
    for f in findings:
        value = text[f.start : f.end]
        if not any(value in part for part in kept) and value not in MASK:
            assert value not in masked


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECES, max_size=10).map("".join), _SECRET, st.lists(_PIECES, max_size=10))
def test_planted_labelled_secret_is_masked(prefix: str, secret: str, suffix: list[str]) -> None:
    secret += "9"  # a digit makes it a value even when prose follows on the line
    text = f"{prefix}\nPasswort: {secret}\n{''.join(suffix)}"
    masked, _ = mask_secrets(text)
    assert secret not in masked


def test_token_longer_than_the_window_is_masked_whole() -> None:
    token = "Ab1" * 400
    masked, findings = mask_secrets(f"Passwort: {token} ende")
    assert masked == f"Passwort: {MASK} ende"
    assert [f.kind for f in findings] == ["password"]


@pytest.mark.parametrize(
    "text",
    [
        "a-" * 50_000,
        "eyJa." * 40_000,
        "pw:" * 50_000,
        "Passwort: x " * 20_000,
        "a." * 100_000,
        "Passwort für das " * 30_000,
        "Passwort ist jetzt " * 30_000,
        "Zugangsdaten:\n" * 50_000,
        "login a / b " * 30_000,
        "_key_key" * 40_000,
        ("a:1:b:c:" * 30 + "\n") * 3_000,
        "machine x " * 50_000,
        "Private-Lines: 4\n" + ("A" * 127 + "\n") * 20_000,
    ],
    ids=[
        "hyphen-words",
        "jwt-ish",
        "label-chain",
        "many-labels",
        "dotted",
        "fillers",
        "skipped-words",
        "block-labels",
        "login-pairs",
        "key-chain",
        "pgpass-ish",
        "netrc-ish",
        "putty-lines",
    ],
)
def test_adversarial_input_stays_linear(text: str) -> None:
    """A mail daemon must not hang on one crafted body; these took minutes before bounding."""
    start = time.thread_time()  # CPU seconds: the scan's own, whatever else the machine runs
    mask_secrets(text)
    assert time.thread_time() - start < 2.0
