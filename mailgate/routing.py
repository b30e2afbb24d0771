"""Which organization a new ticket belongs to, and why.

Agencies name their customer at the start of the subject (``Müller Logistik: Drucker
kaputt``); the customer pays and must see the ticket. Getting the name wrong leaks a ticket
into a stranger's organization, so a named organization counts only when the sender is
related to it (member, member of one of its agencies, or agent). Everything here is pure:
:class:`Router` is built once per config load and answers :meth:`Router.route` from the
sender, the recipients and the subject alone, with the reason for its answer.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property

from rapidfuzz import fuzz, process

from mailgate.config import Config, OrganizationConfig, RoutingRule, TicketsConfig
from mailgate.confload import fingerprint
from mailgate.emergency import emergency, escalated
from mailgate.hours import SupportHours


@dataclass(frozen=True, slots=True)
class UnusedPrefix:
    """A customer name in the subject ("Kundenname: Betreff") that did not decide the
    organization, and why, so the acknowledgement can tell the sender what to do.

    ``why`` is ``unknown`` (names no organization), ``ambiguous`` (``names`` are the close
    candidates) or ``not_authorised`` (``names`` is the one it named; the sender is neither
    its member nor a member of one of its agencies).
    """

    why: str
    prefix: str
    names: tuple[str, ...] = ()

    def as_payload(self) -> dict[str, object]:
        """What the acknowledgement's outbox row carries (the template words it)."""
        return {"why": self.why, "prefix": self.prefix, "names": list(self.names)}


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The organization chosen for a new ticket (None: no organization), with the reason.

    ``subject`` is the subject the ticket gets: without the customer prefix when that
    prefix decided the organization. ``candidates`` are the best fuzzy matches, on
    rapidfuzz's 0–100 scale, so an admin can see what almost matched.
    """

    organization: str | None
    reason: str
    score: float | None = None
    candidates: tuple[tuple[str, float], ...] = ()
    subject: str = ""
    priority: str | None = None
    tags: tuple[str, ...] = ()
    unused_prefix: UnusedPrefix | None = None  # a subject prefix given but not honoured
    emergency: bool = False  # a keyword of [support] emergency_keywords in the subject

    def as_json(self) -> dict[str, object]:
        """The contract of ``mailgate route --json``."""
        return {
            "organization": self.organization,
            "reason": self.reason,
            "score": self.score,
            "subject": self.subject,
            "candidates": [{"name": n, "score": round(s, 1)} for n, s in self.candidates],
            "priority": self.priority,
            "tags": list(self.tags),
            "emergency": self.emergency,
        }


@dataclass(frozen=True, slots=True)
class NameMatch:
    """What a written organization name matched: one organization, none, or two too close."""

    NONE = "none"
    AMBIGUOUS = "ambiguous"

    organization: str | None
    candidates: tuple[tuple[str, float], ...]
    problem: str | None = None  # NONE | AMBIGUOUS


# --- subject normalisation -------------------------------------------------------------------

# Reply and forward prefixes in the languages our users write: English, German, Dutch,
# Scandinavian, Finnish, French, Italian, Spanish, Portuguese, Polish, Czech, Turkish, …
# (Outlook localises them), optionally numbered ("Re[2]:", "AW(3):", "Re^2:").
_REPLY_WORDS = "|".join(
    """
    re aw antw antwort wg wtr fwd fw sv vs vb tr rif odp r rv enc res ref rép rep vá vl
    ynt ilt yan atb přeposlat odpověď pd doorst trs továbbítás válasz ответ пересл
    回复 转发 回覆 轉寄 답장 전달
    """.split()  # noqa: SIM905
)
_REPLY_PREFIX = re.compile(
    rf"^\s*(?:(?:{_REPLY_WORDS})\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_TICKET_TAG = re.compile(rf"\s*{TicketsConfig().tag_regex}\s*")  # the default tag


def normalize_subject(subject: str, tag_regex: str | None = None) -> str:
    """Strip reply/forward prefixes (repeated, mixed) and our ``[#123]`` tags; keep the rest."""
    tag = _TICKET_TAG if tag_regex is None else re.compile(rf"\s*{tag_regex}\s*")
    text = " ".join(subject.split())
    while True:
        stripped = tag.sub(" ", text).strip()
        stripped = _REPLY_PREFIX.sub("", stripped).strip()
        if stripped == text:
            return text
        text = stripped


# --- prefix extraction -----------------------------------------------------------------------

MAX_NAME = 60

# Words people put before a colon that are not customer names.
COMMON_WORDS = frozenset(
    """
    wichtig dringend eilig frage fragen anfrage info information hinweis achtung bitte
    problem probleme fehler störung stoerung notfall hilfe support ticket rechnung angebot
    auftrag bestellung termin update test betreff antwort hallo hi hello urgent important
    question help issue bug error request invoice order offer notice reminder erinnerung
    fyi note todo action alert warnung warning emergency critical kritisch neu new
    """.split()  # noqa: SIM905
)

_TIME_COLON = re.compile(r"\d\s*$")  # "10:30": a colon between digits separates nothing
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Prefix:
    """A candidate customer name and the subject after it."""

    name: str
    rest: str
    common_word: bool


def extract_prefix(subject: str, separators: Iterable[str] = (":",)) -> Prefix | None:
    """The text before the first separator, when it can be a customer name."""
    positions: list[tuple[int, int]] = []
    for sep in separators:
        if sep == ":":
            for match in re.finditer(r"[:：]", subject):
                start = match.start()
                after = subject[match.end() : match.end() + 2]
                if _TIME_COLON.search(subject[:start]) and after[:1].isdigit():
                    continue  # a time such as 10:30
                if after.startswith("//"):
                    continue  # a URL such as https://…
                positions.append((start, match.end()))
                break
        else:
            spaced = re.search(rf"\s{re.escape(sep)}\s", subject)
            if spaced:
                positions.append((spaced.start(), spaced.end()))
    if not positions:
        return None
    start, end = min(positions)
    name = subject[:start].strip()
    rest = subject[end:].strip()
    if not 1 <= len(name) <= MAX_NAME or not any(c.isalnum() for c in name):
        return None
    if "://" in name or name.lower().startswith("www."):
        return None  # a URL, not a name
    if _REPLY_PREFIX.match(name + ":"):
        return None
    if _URL_SCHEME.match(name) and subject[end:].startswith("//"):
        return None
    words = name.split()
    common = len(words) == 1 and words[0].casefold() in COMMON_WORDS
    return Prefix(name=name, rest=rest, common_word=common)


# --- name normalisation ----------------------------------------------------------------------

_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "æ": "ae", "ø": "oe"})
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CONJUNCTIONS = frozenset({"und", "and", "et"})
# Legal forms, as token sequences after punctuation is collapsed ("e.V." → "e v").
_LEGAL_FORMS = sorted(
    (
        tuple(form.split())
        for form in (
            "gmbh co kg",
            "gmbh co kgaa",
            "gmbh co ohg",
            "ag co kg",
            "se co kg",
            "ug haftungsbeschraenkt",
            "ug haftungsbeschraenkt co kg",
            "gmbh",
            "ggmbh",
            "mbh",
            "ag",
            "kg",
            "kgaa",
            "ohg",
            "gbr",
            "ug",
            "e v",
            "ev",
            "e k",
            "ek",
            "eg",
            "se",
            "ltd",
            "limited",
            "inc",
            "llc",
            "llp",
            "plc",
            "corp",
            "co",
            "s a",
            "sa",
            "sas",
            "sarl",
            "s r l",
            "srl",
            "spa",
            "s p a",
            "b v",
            "bv",
            "n v",
            "nv",
            "ab",
            "as",
            "oy",
            "aps",
        )
    ),
    key=len,
    reverse=True,
)


# Forms with a long word, which people mistype; only these are compared fuzzily.
_LONG_FORMS = tuple(form for form in _LEGAL_FORMS if any(len(word) >= 7 for word in form))
_FORMS_BY_LAST_WORD: dict[str, tuple[tuple[str, ...], ...]] = {
    last: tuple(form for form in _LEGAL_FORMS if form[-1] == last)
    for last in {form[-1] for form in _LEGAL_FORMS}
}


def _legal_form_at_end(tokens: list[str], form: tuple[str, ...]) -> bool:
    """The name ends in this legal form; long words may carry a typo ("haftungsbeschräkt")."""
    tail = tokens[-len(form) :]
    return all(
        t == f or (len(f) >= 7 and fuzz.ratio(t, f) >= 85) for t, f in zip(tail, form, strict=True)
    )


def normalize_name(name: str) -> str:
    """Case-fold, transliterate umlauts, fold accents, drop legal forms and punctuation."""
    text = name.casefold().replace("&", " ").translate(_TRANSLIT)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    # "und", "and" and "&" join names but carry nothing: "Schmidt und Söhne" = "Schmidt & Söhne".
    tokens = [t for t in _NON_WORD.sub(" ", text).split() if t not in _CONJUNCTIONS]
    while len(tokens) > 1:
        candidates = (*_FORMS_BY_LAST_WORD.get(tokens[-1], ()), *_LONG_FORMS)
        size = next(
            (
                len(form)
                for form in candidates  # longest first: "gmbh co kg" before "kg"
                if len(tokens) > len(form) and _legal_form_at_end(tokens, form)
            ),
            0,
        )
        if not size:
            break
        tokens = tokens[:-size]
    return " ".join(tokens)


# Whole-name similarity is the best of these: tolerant of typos and word order, never of
# partial names. Partial matching (WRatio) would let "Müller" match "Müller Logistik" at
# 90 and put a ticket into the wrong Müller; whole-string ratios do not.
_SCORERS = (fuzz.ratio, fuzz.token_sort_ratio)


def similarity(a: str, b: str) -> float:
    """Whole-name similarity (see ``_SCORERS``)."""
    return max(scorer(a, b) for scorer in _SCORERS)


# --- the index -------------------------------------------------------------------------------

_CANDIDATES = 96  # entries scored exactly per query, after trigram pre-selection
# Postings read per query, rarest trigrams first: rare trigrams select, common ones
# ("er ", "ung") mostly cost time. Bounds the work per mail at any number of organizations.
_POSTINGS_BUDGET = 12_000


def _trigrams(key: str) -> set[str]:
    padded = f"  {key} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


class NameIndex:
    """Organization names and aliases, normalised once, searchable in well under 2 ms.

    A trigram index pre-selects a few dozen entries that share the most trigrams with the
    query; only those are scored with rapidfuzz. Built once per config load.
    """

    def __init__(self, organizations: Iterable[OrganizationConfig]) -> None:
        self.keys: list[str] = []
        self.owners: list[str] = []
        self.exact: dict[str, set[str]] = {}
        self.postings: dict[str, list[int]] = {}
        for org in organizations:
            for label in (org.name, *org.aliases):
                key = normalize_name(label)
                if not key:
                    continue
                entry = len(self.keys)
                self.keys.append(key)
                self.owners.append(org.name)
                self.exact.setdefault(key, set()).add(org.name)
                for gram in _trigrams(key):
                    self.postings.setdefault(gram, []).append(entry)

    def search(self, name: str, limit: int = 3) -> list[tuple[str, float]]:
        """The best-matching organizations (one score each, best label), best first."""
        key = normalize_name(name)
        if not key or not self.keys:
            return []
        # Sorted, so that equal counts break the same way in every process (no hash order).
        lists = sorted(
            (self.postings[g] for g in _trigrams(key) if g in self.postings),
            key=lambda postings: (len(postings), postings[0]),
        )
        counts: Counter[int] = Counter()
        budget = _POSTINGS_BUDGET
        for postings in lists:
            if budget <= 0:
                break
            counts.update(postings)
            budget -= len(postings)
        # = counts.most_common(_CANDIDATES), whose decorated heap cost as much as counting
        entries = sorted(counts, key=counts.__getitem__, reverse=True)[:_CANDIDATES]
        # Scored in rapidfuzz's own loop: a call per entry from here cost three times more.
        choices = [self.keys[entry] for entry in entries]
        best: dict[str, float] = {}
        for scorer in _SCORERS:
            for _, score, index in process.extract(
                key, choices, scorer=scorer, processor=None, limit=None
            ):
                owner = self.owners[entries[index]]
                if score > best.get(owner, -1.0):
                    best[owner] = score
        exact = self.exact.get(key, set())
        for owner in exact:
            best[owner] = 100.0
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]


# --- decisions -------------------------------------------------------------------------------


def domain_of(email: str) -> str:
    return email.rpartition("@")[2].lower()


def domain_matches(email: str, domains: Iterable[str]) -> bool:
    """True when the address's domain is one of ``domains`` or a subdomain of one."""
    domain = domain_of(email)
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _glob_matches(pattern: str, address: str) -> bool:
    if "@" not in pattern and not any(c in pattern for c in "*?["):
        return domain_matches(address, (pattern,))  # a bare domain
    return fnmatch.fnmatchcase(address.lower(), pattern)


def rule_matches(rule: RoutingRule, sender: str, recipients: Iterable[str], subject: str) -> bool:
    """All conditions the rule gives must hold."""
    if rule.from_ is not None and not _glob_matches(rule.from_, sender):
        return False
    if rule.to is not None and not any(_glob_matches(rule.to, r) for r in recipients):
        return False
    return rule.subject is None or re.search(rule.subject, subject, re.IGNORECASE) is not None


class Router:
    """Routing for one config: the name index and membership look-ups, built once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = NameIndex(config.organizations)
        self.by_name = {org.name: org for org in config.organizations}
        self._member_of: dict[str, list[OrganizationConfig]] = {}
        for org in config.organizations:
            for member in org.members:
                self._member_of.setdefault(member, []).append(org)
        self.agents = frozenset(config.agents.addresses)
        # Domain → first organization (config order) that lists it: one look-up per mail.
        self._domain_owner: dict[str, str] = {}
        for org in config.organizations:
            for domain in org.domains:
                self._domain_owner.setdefault(domain, org.name)
        self._by_casefold = {org.name.casefold(): org.name for org in config.organizations}

    @cached_property
    def hours(self) -> SupportHours:
        """``[hours]`` compiled (its holiday calendar is built once per year and kept)."""
        return SupportHours(self.config.hours)

    @cached_property
    def fingerprint(self) -> str:
        """Of the config (see :func:`mailgate.confload.fingerprint`), computed when first asked."""
        return fingerprint(self.config)

    def memberships(self, email: str) -> tuple[OrganizationConfig, ...]:
        """The organizations the address is a member of, in config order."""
        return tuple(self._member_of.get(email.lower(), ()))

    def domain_owner(self, domain: str) -> str | None:
        """The organization owning the domain or its nearest parent (a.b.c, b.c, c)."""
        labels = domain.lower().split(".")
        for i in range(len(labels) - 1):
            owner = self._domain_owner.get(".".join(labels[i:]))
            if owner is not None:
                return owner
        return None

    def authorised(self, email: str, organization: str) -> bool:
        """May this sender put a ticket into that organization by naming it?"""
        email = email.lower()
        if email in self.agents:
            return True
        org = self.by_name[organization]
        if email in org.members:
            return True
        mine = {o.name.casefold() for o in self.memberships(email)}
        return any(agency.casefold() in mine for agency in org.agencies)

    def route(self, sender: str, subject: str, recipients: Iterable[str] = ()) -> RouteDecision:
        """Rules, then the named customer, then the sender's fallbacks; an emergency's
        subject makes the ticket urgent and tags it, whatever the organization."""
        decision = self._route(sender, subject, recipients)
        if emergency(subject, "", self.config.support.emergency_keywords) is None:
            return decision
        priority, tags = escalated(decision.tags)
        return _with(decision, priority=priority, tags=tags, emergency=True)

    def _route(self, sender: str, subject: str, recipients: Iterable[str]) -> RouteDecision:
        sender = sender.lower()
        recipients = tuple(recipients)
        original = " ".join(subject.split())
        for number, rule in enumerate(self.config.routing.rules, start=1):
            if rule_matches(rule, sender, recipients, original):
                if rule.organization is None:
                    fallback = self.fallback(sender, original)
                    return _with(
                        fallback,
                        priority=rule.priority,
                        tags=rule.tags,
                        reason=f"{fallback.reason}; rule {number} set priority/tags",
                    )
                return RouteDecision(
                    rule.organization,
                    f"routing rule {number}",
                    subject=original,
                    priority=rule.priority,
                    tags=rule.tags,
                )
        return self.by_prefix(sender, original)

    def match_name(self, name: str) -> NameMatch:
        """The organization a written name means, for a subject prefix and ``#org`` alike.

        Below ``routing.threshold`` it names none; two candidates closer than
        ``routing.ambiguity_margin`` are ambiguous, unless the first is typed exactly and
        the second is not (a name typed exactly is meant).
        """
        routing = self.config.routing
        candidates = tuple(self.index.search(name, limit=3))
        if not candidates or candidates[0][1] < routing.threshold:
            return NameMatch(None, candidates, NameMatch.NONE)
        best = candidates[0]
        if (
            len(candidates) > 1
            and best[1] - candidates[1][1] < routing.ambiguity_margin
            and not (best[1] == 100.0 and candidates[1][1] < 100.0)
        ):
            return NameMatch(None, candidates, NameMatch.AMBIGUOUS)
        return NameMatch(best[0], candidates)

    def by_prefix(self, sender: str, subject: str) -> RouteDecision:
        routing = self.config.routing
        prefix = extract_prefix(
            normalize_subject(subject, self.config.tickets.tag_regex), routing.separators
        )
        if prefix is None:
            return self.fallback(sender, subject)
        match = self.match_name(prefix.name)
        candidates = match.candidates
        if match.problem == NameMatch.NONE:
            fallback = self.fallback(sender, subject)
            if prefix.common_word:
                return fallback
            return _with(
                fallback,
                reason=f"{fallback.reason}; prefix {prefix.name!r} names no organization",
                candidates=candidates,
                unused_prefix=UnusedPrefix("unknown", prefix.name),
            )
        best = candidates[0]
        if match.problem == NameMatch.AMBIGUOUS:
            fallback = self.fallback(sender, subject)
            return _with(
                fallback,
                reason=(
                    f"{fallback.reason}; prefix {prefix.name!r} is ambiguous between "
                    f"{best[0]} ({best[1]:.0f}) and {candidates[1][0]} ({candidates[1][1]:.0f})"
                ),
                candidates=candidates,
                unused_prefix=UnusedPrefix("ambiguous", prefix.name, (best[0], candidates[1][0])),
            )
        name, score = best
        if not self.authorised(sender, name):
            fallback = self.fallback(sender, subject)
            return _with(
                fallback,
                reason=f"{fallback.reason}; named {name} but not authorised",
                candidates=candidates,
                unused_prefix=UnusedPrefix("not_authorised", prefix.name, (name,)),
            )
        return RouteDecision(
            name,
            f"subject names {name} ({score:.0f}); sender is {self._relation(sender, name)}",
            score=score,
            candidates=candidates,
            subject=prefix.rest or subject,
        )

    def _relation(self, sender: str, organization: str) -> str:
        if sender in self.by_name[organization].members:
            return "a member"
        if sender in self.agents:
            return "an agent"
        return "a member of its agency"

    def fallback(self, sender: str, subject: str) -> RouteDecision:
        """Membership, primary membership, domain, default, none — in that order."""
        orgs = self.memberships(sender)
        if len(orgs) == 1:
            return RouteDecision(
                orgs[0].name, f"sender is a member of {orgs[0].name}", subject=subject
            )
        if orgs:
            primary = next((o for o in orgs if sender in o.primary_for), None)
            if primary is not None:
                return RouteDecision(
                    primary.name,
                    f"sender's primary organization is {primary.name}",
                    subject=subject,
                )
            return RouteDecision(
                orgs[0].name,
                f"sender is a member of {len(orgs)} organizations; {orgs[0].name} is first "
                "in the config",
                subject=subject,
            )
        routing = self.config.routing
        domain = domain_of(sender)
        if not routing.is_freemail(domain):
            owner = self.domain_owner(domain)
            if owner is not None:
                return RouteDecision(
                    owner, f"sender's domain {domain} belongs to {owner}", subject=subject
                )
        return self.unknown(subject)

    def unknown(self, subject: str, why: str = "") -> RouteDecision:
        """Where mail from a sender nobody knows goes: the default organization, or none."""
        routing = self.config.routing
        if routing.default_organization:
            name = self._by_casefold.get(
                routing.default_organization.casefold(), routing.default_organization
            )
            return RouteDecision(name, f"{why}routing.default_organization", subject=subject)
        return RouteDecision(None, f"{why}no organization: sender is unknown", subject=subject)

    def stranger(self, subject: str, verdict: str) -> RouteDecision:
        """A sender whose From domain failed DMARC may be anyone: no membership, no
        domain, no prefix counts for it."""
        return self.unknown(subject, f"{verdict}, treated as a stranger: ")


def _with(decision: RouteDecision, **changes: object) -> RouteDecision:
    return replace(decision, **changes)  # type: ignore[arg-type]
