"""The shapes ``mailgate.secrets_scan`` looks for: provider tokens, key files, config lines.

Data only, so that the scan's logic stays readable. Each token rule names its kind, its
pattern, the group that is the secret, and literals the pattern cannot match without: the scan
skips a rule whose literals are absent, which is a hundred times cheaper than a regex scan whose
leading lookbehind defeats the regex engine's own prefix search. Lower-case literals of
case-insensitive rules are looked for in the lowercased text.

The provider shapes follow the prefixes the providers document and that detect-secrets'
plugins know (GitHub, GitLab, Slack, Stripe, Google, OpenAI, SendGrid, Twilio, npm, PyPI,
Shopify, DigitalOcean, Mailgun, Telegram). detect-secrets itself is not used: on the labelled
set (``bench/secrets_eval.py --library``, 649 cases then) it masked the secrets of 16.1 % of the
355 cases that hold one; united with this scan it found no case this scan misses and added a
false alarm (a Twilio account SID); and it cost 55 ms of CPU per generated mail body against
0.3 ms for this scan.

Every repeat is bounded, so no rule can backtrack without limit on a crafted body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenRule:
    """One shape found wherever it appears; ``text[m.span(group)]`` is the secret."""

    kind: str
    pattern: re.Pattern[str]
    literals: tuple[str, ...]
    group: int = 0


def _rule(kind: str, pattern: str, literals: tuple[str, ...], group: int = 0) -> TokenRule:
    return TokenRule(kind, re.compile(pattern), literals, group)


# A token may not continue a longer word on either side.
_B = r"(?<![0-9A-Za-z_-])"
_E = r"(?![0-9A-Za-z_-])"

PEM_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
    re.DOTALL,
)

# Order matters only for equal spans: more specific kinds come first, so a JWT after "Bearer"
# is reported as ``jwt``.
TOKEN_RULES: tuple[TokenRule, ...] = (
    _rule("aws_key", r"(?<![0-9A-Za-z])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])", ("AKIA", "ASIA")),
    _rule(
        "github_token",
        r"(?<![0-9A-Za-z_])gh[pousr]_[A-Za-z0-9]{36,255}",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    _rule("github_token", r"(?<![0-9A-Za-z_])github_pat_[A-Za-z0-9_]{22,255}", ("github_pat_",)),
    _rule(
        "gitlab_token",
        _B + r"gl(?:pat|rt|dt|ptt|cbt|soat|ft|imt|agent)-[A-Za-z0-9_-]{20,255}",
        ("glpat-", "glrt-", "gldt-", "glptt-", "glcbt-", "glsoat-", "glft-", "glimt-", "glagent-"),
    ),
    _rule("slack_token", r"(?<![0-9A-Za-z_])xox[abeoprs]-[A-Za-z0-9-]{10,255}", ("xox",)),
    _rule("slack_token", _B + r"xapp-\d-[A-Za-z0-9-]{10,255}", ("xapp-",)),
    _rule(
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,255}",
        ("hooks.slack.com",),
    ),
    _rule(
        "stripe_key",
        r"(?<![0-9A-Za-z_])[sr]k_(?:live|test)_[A-Za-z0-9]{16,255}",
        ("k_live_", "k_test_"),
    ),
    _rule("stripe_key", _B + r"whsec_[A-Za-z0-9]{24,255}", ("whsec_",)),
    _rule("google_api_key", r"(?<![0-9A-Za-z_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",)),
    _rule("google_oauth_secret", _B + r"GOCSPX-[A-Za-z0-9_-]{20,64}", ("GOCSPX-",)),
    # OpenAI, Anthropic and others: "sk-", often "sk-proj-…"; a digit is required (see scan).
    _rule("api_key", _B + r"sk-[A-Za-z0-9_-]{20,255}", ("sk-",)),
    _rule("sendgrid_key", _B + r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}" + _E, ("SG.",)),
    # Twilio's API key SID; the account SID ("AC…") is an identifier, not a secret.
    _rule("twilio_key", r"(?<![0-9A-Za-z])SK[0-9a-fA-F]{32}(?![0-9A-Za-z])", ("SK",)),
    _rule("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, ("npm_",)),
    _rule("pypi_token", _B + r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,255}", ("pypi-",)),
    _rule("shopify_token", _B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + _E, ("shp",)),
    _rule("digitalocean_token", _B + r"do[opr]_v1_[a-f0-9]{64}" + _E, ("_v1_",)),
    _rule("mailgun_key", _B + r"key-[0-9a-f]{32}" + _E, ("key-",)),
    _rule("telegram_token", r"(?<![0-9A-Za-z])\d{8,10}:AA[A-Za-z0-9_-]{33}" + _E, (":AA",)),
    _rule(
        "jwt",
        r"(?<![0-9A-Za-z_-])eyJ[A-Za-z0-9_-]{1,8192}\.eyJ[A-Za-z0-9_-]{1,8192}\.[A-Za-z0-9_-]*",
        ("eyJ",),
    ),
    _rule("bearer_token", r"(?i:\bbearer)[ \t]+([A-Za-z0-9._~+/=-]{20,4096})", ("bearer",), 1),
    # "Authorization: Basic dXNlcjpwYXNz", GitHub's "Authorization: token …".
    _rule(
        "auth_header",
        r"(?i:authorization)[ \t]*:[ \t]*(?i:basic|token)[ \t]+([A-Za-z0-9._~+/=-]{8,4096})",
        ("authorization",),
        1,
    ),
    _rule("azure_sas", r"[?&]sig=([A-Za-z0-9%+/=]{20,512})", ("sig=",), 1),
    _rule(
        "url_password",
        # The user part cannot hold "/", so "https://example.com/a:b@c" is no credential.
        r"\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/@]*:([^\s/@]+)@[^\s/@]",
        ("://",),
        1,
    ),
    # .netrc: "machine HOST login USER password SECRET", on one line or several.
    _rule(
        "netrc_password",
        r"(?:\bmachine[ \t]+\S{1,255}|\bdefault)\s{1,64}(?:login[ \t]+\S{1,255}\s{1,64})?"
        r"password[ \t]+(\S{1,512})",
        ("machine", "default"),
        1,
    ),
    # .pgpass: "host:port:database:user:password", a line of its own. The scan also wants a
    # letter or dot in the host (or "*"), so a MAC address "00:11:22:33:44:55" is none.
    _rule(
        "pgpass_password",
        r"(?m)^[ \t]{0,8}[A-Za-z0-9.*-]{1,253}"
        r":(?:\d{1,5}|\*):[^\s:]{1,64}:[^\s:]{1,64}:(\S{1,512})[ \t]*\r?$",
        (":",),
        1,
    ),
    # htpasswd and shadow lines: "user:$apr1$…", "user:$2y$…", "user:{SHA}…".
    _rule(
        "password_hash",
        r"(?<![^\s\"'])[A-Za-z0-9._@-]{1,64}:"
        r"(\$(?:apr1|2[abxy]?|1|5|6|y|argon2id?)\$[^\s:]{8,512}|\{SHA\}[A-Za-z0-9+/]{20,64}={0,2})",
        ("$", "{SHA}"),
        1,
    ),
    # PuTTY key files: the private lines between "Private-Lines: N" and "Private-MAC:".
    _rule(
        "private_key",
        r"Private-Lines:[ \t]*\d{1,4}[ \t]*\r?\n((?:[A-Za-z0-9+/=]{1,128}(?:\r?\n|\Z)){1,200})",
        ("Private-Lines",),
        1,
    ),
)
LOWERCASE_LITERALS = frozenset({"bearer", "authorization"})
# Characters that many literals hold and most texts lack some of. Looking each up once (a
# memchr) and skipping the literals that need a missing one more than halves the cost of the
# literal checks, which are most of the scan's cost on an ordinary mail.
GATE_CHARS = "_-.:$={"
LITERAL_GATES = {
    literal: frozenset(set(literal) & set(GATE_CHARS))
    for rule in TOKEN_RULES
    for literal in rule.literals
}
