"""TOML configuration → frozen, validated dataclasses.

Admins edit one TOML file; every key is documented in ``config.example.toml``. A bad file
must produce one clear line that names the key and the problem, so validation happens
here, once, and the rest of mailgate trusts the dataclasses it gets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar

from mailgate.confsupport import SUPPORT_KEYS, SupportConfig, parse_support
from mailgate.confvalues import (
    FREEMAIL_DOMAINS,
    ConfigProblems,
    _authserv_id,
    _bool,
    _choice,
    _clock_time,
    _database_url,
    _dkim_key,
    _dkim_selector,
    _domain,
    _duration,
    _email,
    _holidays,
    _int,
    _keep_for,
    _list,
    _lower,
    _number,
    _readable_file,
    _recipient,
    _regex,
    _secret,
    _secrets_key,
    _Section,
    _size,
    _str,
    _tag,
    _timezone,
    _url,
    _workers,
)

T = TypeVar("T")

ENV_VAR = "MAILGATE_CONFIG"
DEFAULT_FILE = "mailgate.toml"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    protocol: str = "smtp"  # "smtp" | "lmtp"
    hostname: str = "localhost"
    max_message_size: int = 25 * 1024 * 1024
    timeout: float = 300.0  # idle seconds before a session is closed (RFC 5321 4.5.3.2)
    # Longest line of a mail, in bytes without its CRLF; a longer one is refused (500 5.6.0).
    max_line_length: int = 65536
    # PEM certificate chain and key: offer STARTTLS (RFC 3207) when both are set.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Processes that parse and store mail, beside the one speaking SMTP; None ("auto") is
    # one on SQLite (one writer) and one per CPU on PostgreSQL. 0 stores in a thread of the
    # SMTP process (one core for everything).
    workers: int | None = None
    # Processes that only parse, for the workers; None ("auto") is one beside a single
    # SQLite writer when there are several CPUs, else none (the workers parse).
    parsers: int | None = None
    # At most this many mails that arrive together are committed in one transaction.
    batch_size: int = 32
    # On SIGTERM/SIGINT: how long the mails in flight may take to be answered before the
    # sessions still open are closed with 421 (a service manager's stop timeout must be longer).
    drain_timeout: timedelta = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite:///mailgate.db"
    # How long a write may wait for a lock held by someone else before mailgate gives up
    # and answers 451 (the sender retries) instead of hanging the SMTP session.
    lock_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MailConfig:
    domains: tuple[str, ...] = ("support.example.com",)
    address: str = "support@support.example.com"
    language: str = "de"
    # Key for the reply tokens in our Reply-To addresses. Unset: $MAILGATE_SECRET, else one
    # is generated on first start and kept in the database (shared by all instances).
    secret: str | None = None
    # One-time secret link service customers should use instead of mailing credentials.
    secrets_url: str | None = None
    # The local parts or full addresses we accept in our domains; None: every address.
    recipients: tuple[str, ...] | None = None

    def receives(self, address: str) -> bool:
        """Whether mail to ``address`` is ours to take: one of our domains and, when
        ``recipients`` is set, one of them or the support address, a ``+`` detail (the
        reply token's ``support+12-sig@``) ignored. Agents sharing our domain are not ours:
        their mail belongs to their own mailboxes."""
        local, _, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if domain not in self.domains:
            return False
        if self.recipients is None:
            return True
        base = local.split("+", 1)[0].lower()
        return bool({base, f"{base}@{domain}"} & {*self.recipients, self.address})


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    transport: str = "maildir"  # "maildir" | "smtp"
    maildir: str = "outbox"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None  # name of the environment variable with the password
    timeout: float = 30.0
    # Undeliverable for this long (4xx, relay down) → failed; 5xx fails at once.
    max_age: timedelta = timedelta(days=2)
    # A folder with templates that replace the built-in ones (same file names).
    templates_dir: str | None = None
    # An address that hard-bounced (5.x.x) gets no notifications for this long.
    suppress_for: timedelta = timedelta(days=7)
    # DKIM signing (opt-in): selector and PEM private key go together; the domain defaults
    # to the one of [mail] address.
    dkim_selector: str | None = None
    dkim_key: str | None = None
    dkim_domain: str | None = None
    # An agent's files go out with their agent_reply up to this many bytes in all; the
    # files above it are listed in the mail as left out (the ticket keeps them).
    max_attachment_size: int = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HoursConfig:
    """Support hours; outside them acknowledgements carry the emergency note."""

    timezone: str = "Europe/Berlin"
    open: str = "09:00"
    close: str = "17:00"
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    holidays: str | None = "DE-BE"  # country-subdivision for the holidays package, or none


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds that keep a mail loop or a flood from a single sender from hurting anyone."""

    acks_per_hour: int = 10  # acknowledgements to one sender; beyond, tickets stay silent
    tickets_per_hour: int = 30  # new tickets from one sender; beyond, mail is quarantined
    max_recipients: int = 50  # per SMTP transaction; more get "452 4.5.3"


@dataclass(frozen=True, slots=True)
class HygieneConfig:
    """Machine reports (ARF, DMARC, TLS-RPT): robots read them, so by default no ticket."""

    reports: str = "ignore"  # "ignore": ledger only; "ticket": a ticket, never acknowledged


# How a mail from an agent address may prove it was written by that agent.
AGENT_AUTH_METHODS = ("authentication-results", "dkim", "from-header")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Whom mailgate believes: a forged From must never speak for the support team."""

    verify_dkim: bool = False  # check DKIM on every inbound mail and record the result
    # Honour agents' email commands only from DKIM-verified mail of the agent's domain.
    require_dkim_for_commands: bool = False
    # Any of these authenticates an agent's mail; "authentication-results" counts only once
    # authserv_id names our MTA, "from-header" trusts a forgeable header (closed networks).
    agent_auth: tuple[str, ...] = ("authentication-results", "dkim")
    authserv_id: str | None = None  # our MTA's authserv-id in Authentication-Results
    # Received "by" hosts an Authentication-Results header may stand below (None: the
    # authserv-id; [] none at all); one of another host ends the headers we believe.
    trusted_hosts: tuple[str, ...] | None = None

    @property
    def believed_hosts(self) -> frozenset[str]:
        """``trusted_hosts`` as set, else the authserv-id: the one place of that default."""
        if self.trusted_hosts is not None:
            return frozenset(self.trusted_hosts)
        return frozenset((self.authserv_id,)) if self.authserv_id else frozenset()

    def warnings(self, agents: bool) -> tuple[str, ...]:
        """What an admin must know about these settings (check-config, serve's start)."""
        out: list[str] = []
        if "from-header" in self.agent_auth:
            out.append(
                '[security] agent_auth includes "from-header": anyone who writes an agent\'s '
                "address into From acts as that agent (answers customers, applies commands). "
                "Use it only where no mail from outside can reach mailgate."
            )
        if self.authserv_id is not None and "authentication-results" in self.agent_auth:
            out.append(
                f"[security] authserv_id = {self.authserv_id!r}: your MTA must remove incoming "
                f"Authentication-Results headers that carry {self.authserv_id!r} (RFC 8601 "
                "section 5), or anyone can forge one; see the README, \"Trusting your MTA's "
                'Authentication-Results"'
            )
        elif "authentication-results" in self.agent_auth and agents:
            out.append(
                '[security] agent_auth "authentication-results" is inactive until '
                "[security] authserv_id names your MTA's authserv-id"
            )
        if agents and not self.methods_active():
            out.append(
                "[security] no method of agent_auth is active: every agent's mail is kept as "
                "an internal note and nothing it asks is done"
            )
        return tuple(out)

    def methods_active(self) -> tuple[str, ...]:
        """The agent_auth methods that can authenticate a mail with these settings."""
        return tuple(
            m
            for m in self.agent_auth
            if m != "authentication-results" or self.authserv_id is not None
        )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int | None = None  # unset: no HTTP endpoint


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    """``[secrets]``: credentials found in mail, encrypted behind one-time links for agents."""

    vault: bool = False  # default: on when a key is given
    key: bytes | None = field(default=None, repr=False)  # 32 bytes; never in the database
    ttl: timedelta = timedelta(days=7)  # how long a link reveals its value
    base_url: str = ""  # where links point; "": http://<[metrics] host>:<port>


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How long stored mail keeps its bytes (``mailgate purge``); None: forever."""

    sent_notifications: timedelta | None = timedelta(days=90)
    raw_mail: timedelta | None = timedelta(days=365)
    quarantine: timedelta | None = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class JobsConfig:
    outbox_interval: timedelta = timedelta(seconds=10)
    close_interval: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """An admin's rule, checked before the subject prefix; the first that matches wins."""

    organization: str | None = None
    from_: str | None = None  # glob ("*@kunde.de") or bare domain ("kunde.de")
    to: str | None = None  # glob on any envelope recipient or To/Cc address
    subject: str | None = None  # regular expression, searched case-insensitively
    priority: str | None = None  # ticket priority the rule sets
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    # On rapidfuzz's 0–100 scale; chosen from the routing table in tests/test_routing.py,
    # where true matches score 90 and up and unrelated prefixes 44 at most.
    threshold: float = 85.0
    default_organization: str | None = None
    # When the best two organizations score within this many points, do not guess.
    ambiguity_margin: float = 5.0
    # Separators between "Kundenname" and "Betreff": ":" always; "-" and "|" on request
    # (matched only with spaces around them, so "Rhein-Main" stays one name).
    separators: tuple[str, ...] = (":",)
    # Added to the built-in free-mail list (FREEMAIL_DOMAINS).
    freemail_domains: tuple[str, ...] = ()
    rules: tuple[RoutingRule, ...] = ()

    def is_freemail(self, domain: str) -> bool:
        domain = domain.lower()
        return domain in FREEMAIL_DOMAINS or domain in self.freemail_domains


@dataclass(frozen=True, slots=True)
class TicketsConfig:
    close_after: timedelta = timedelta(days=3)
    # How ticket numbers appear in subjects; "{id}" is the number.
    tag: str = "[#{id}]"
    # Tell the requester when a solved ticket is closed.
    notify_closed: bool = True

    def tag_for(self, ticket_id: int) -> str:
        """Ticket ``ticket_id``'s tag as it goes into subjects, e.g. "[#42]"."""
        return self.tag.replace("{id}", str(ticket_id))

    @property
    def tag_regex(self) -> str:
        """The tag as a regular expression with the number as group 1."""
        before, _, after = self.tag.partition("{id}")
        return re.escape(before) + r"\s*(\d+)\s*" + re.escape(after)


@dataclass(frozen=True, slots=True)
class AgentsConfig:
    addresses: tuple[str, ...] = ()
    notify: tuple[str, ...] | None = None  # None: every agent address
    # The first agent who answers an unassigned ticket publicly becomes its assignee.
    assign_on_reply: bool = True
    digest: str | None = None  # "08:30": each agent's morning digest on working days

    @property
    def notified(self) -> tuple[str, ...]:
        """Who hears of new tickets and customer replies: ``[agents] notify``, by default
        every agent; ``[]`` tells nobody."""
        return self.addresses if self.notify is None else self.notify

    @property
    def team(self) -> frozenset[str]:
        """The support team: agents and the addresses told of new tickets (a team list).
        They may read every ticket and may share our domain."""
        return frozenset((*self.addresses, *self.notified))


@dataclass(frozen=True, slots=True)
class OrganizationConfig:
    name: str
    aliases: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    followers: tuple[str, ...] = ()
    agencies: tuple[str, ...] = ()
    # Members for whom this is the primary organization (used when they are in several).
    primary_for: tuple[str, ...] = ()
    language: str | None = None  # "de" | "en"; else [mail].language


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    organizations: tuple[OrganizationConfig, ...] = ()
    hours: HoursConfig = field(default_factory=HoursConfig)
    support: SupportConfig = field(default_factory=SupportConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)
    source: str = "built-in defaults"  # where the config came from, for messages
    # The SHA-256 of the file's bytes: the database notes it at sync, so a command finds
    # an unchanged file in sync without parsing its organizations (mailgate.confcache).
    file_digest: str | None = None
    # True: loaded without its organizations (``organizations`` is empty), for commands
    # that read the database only; never synced, never routed with.
    partial: bool = False

    @property
    def team(self) -> frozenset[str]:
        """Who may read every ticket and may share our domain: the agents' team and the
        addresses paged for emergencies (``[support] emergency_notify``)."""
        return self.agents.team | frozenset(self.support.emergency_notify or ())

    def organization(self, name: str) -> OrganizationConfig | None:
        """The organization of that name (case-insensitive), or None."""
        wanted = name.casefold()
        return next((o for o in self.organizations if o.name.casefold() == wanted), None)


def _rule(raw: Any, index: int, problems: list[str]) -> RoutingRule:
    label = f"routing.rules[{index + 1}]"
    known = {"from", "to", "subject", "organization", "priority", "tags"}
    before = len(problems)
    s = _Section(raw, label, known, problems)
    rule = RoutingRule(
        organization=s.get("organization", None, _str),
        from_=s.get("from", None, _lower),
        to=s.get("to", None, _lower),
        subject=s.get("subject", None, _regex),
        priority=s.get("priority", None, _choice("low", "normal", "high", "urgent")),
        tags=s.get("tags", (), _list(_str)),
    )
    if len(problems) > before:
        return rule  # a key's own mistake: the checks of the whole rule would only echo it
    if rule.from_ is None and rule.to is None and rule.subject is None:
        problems.append(f"{label}: needs at least one of 'from', 'to', 'subject'")
    if rule.organization is None and rule.priority is None and not rule.tags:
        problems.append(f"{label}: sets nothing; give 'organization', 'priority' or 'tags'")
    return rule


# The sections a config file may have; each but [[organizations]] is a field of Config.
SECTIONS = frozenset(
    {
        "server",
        "database",
        "mail",
        "outbound",
        "routing",
        "tickets",
        "agents",
        "organizations",
        "hours",
        "support",
        "jobs",
        "retention",
        "limits",
        "metrics",
        "secrets",
        "security",
        "hygiene",
    }
)


def parse_config(
    data: Mapping[str, Any], source: str = "inline", known: frozenset[str] = frozenset()
) -> Config:
    """Validate a decoded TOML document; raise :class:`ConfigProblems` naming every bad key.

    A mistake is noted and parsing goes on with the key's default, so that every mistake is
    reported at once; checks across keys are skipped when one of their keys was wrong.
    ``known``: organization names (case-folded) that references may name besides the
    document's own (a document without its organizations, see :mod:`mailgate.confcache`).
    """
    problems: list[str] = []

    def section(data: Any, name: str, known: set[str]) -> _Section:
        return _Section(data, name, known, problems)

    for name in sorted(set(data) - SECTIONS):
        problems.append(f"[{name}]: unknown section")

    d_server = ServerConfig()
    before = len(problems)
    s = section(
        data.get("server", {}),
        "server",
        {
            "host",
            "port",
            "protocol",
            "hostname",
            "max_message_size",
            "timeout",
            "max_line_length",
            "tls_cert",
            "tls_key",
            "workers",
            "parsers",
            "batch_size",
            "drain_timeout",
        },
    )
    server = ServerConfig(
        host=s.get("host", d_server.host, _str),
        port=s.get("port", d_server.port, _int(0, 65535)),
        protocol=s.get("protocol", d_server.protocol, _choice("smtp", "lmtp")),
        hostname=s.get("hostname", d_server.hostname, _str),
        max_message_size=s.get("max_message_size", d_server.max_message_size, _int(1024, 2**31)),
        timeout=s.get("timeout", d_server.timeout, _number(1, 3600)),
        # RFC 5321 4.5.3.1.6: at least 998; at most what a mail may hold.
        max_line_length=s.get("max_line_length", d_server.max_line_length, _int(998, 2**31)),
        tls_cert=s.get("tls_cert", None, _readable_file),
        tls_key=s.get("tls_key", None, _readable_file),
        workers=s.get("workers", None, _workers),
        parsers=s.get("parsers", None, _workers),
        batch_size=s.get("batch_size", d_server.batch_size, _int(1, 1000)),
        drain_timeout=s.get("drain_timeout", d_server.drain_timeout, _duration),
    )
    if len(problems) == before and (server.tls_cert is None) != (server.tls_key is None):
        problems.append("[server].tls_key: tls_cert and tls_key go together; give both")

    d_db = DatabaseConfig()
    s = section(data.get("database", {}), "database", {"url", "lock_timeout"})
    database = DatabaseConfig(
        url=s.get("url", d_db.url, _database_url),
        lock_timeout=s.get("lock_timeout", d_db.lock_timeout, _number(0.05, 600)),
    )

    d_mail = MailConfig()
    s = section(
        data.get("mail", {}),
        "mail",
        {"domains", "address", "language", "secret", "secrets_url", "recipients"},
    )
    mail = MailConfig(
        domains=s.get("domains", d_mail.domains, _list(_domain)),
        address=s.get("address", d_mail.address, _email),
        language=s.get("language", d_mail.language, _choice("de", "en")),
        secret=s.get("secret", None, _secret) or os.environ.get("MAILGATE_SECRET") or None,
        secrets_url=s.get("secrets_url", None, _url),
        recipients=s.get("recipients", None, _list(_recipient)),
    )
    if not mail.domains:
        problems.append("[mail].domains: must name at least one domain we accept mail for")

    d_out = OutboundConfig()
    s = section(
        data.get("outbound", {}),
        "outbound",
        {
            "transport",
            "maildir",
            "smtp_host",
            "smtp_port",
            "starttls",
            "username",
            "password_env",
            "timeout",
            "max_age",
            "templates_dir",
            "suppress_for",
            "dkim_selector",
            "dkim_key",
            "dkim_domain",
            "max_attachment_size",
        },
    )
    before = len(problems)
    outbound = OutboundConfig(
        transport=s.get("transport", d_out.transport, _choice("maildir", "smtp")),
        maildir=s.get("maildir", d_out.maildir, _str),
        smtp_host=s.get("smtp_host", d_out.smtp_host, _str),
        smtp_port=s.get("smtp_port", d_out.smtp_port, _int(1, 65535)),
        starttls=s.get("starttls", False, _bool),
        username=s.get("username", None, _str),
        password_env=s.get("password_env", None, _str),
        timeout=s.get("timeout", d_out.timeout, _number(1, 600)),
        max_age=s.get("max_age", d_out.max_age, _duration),
        templates_dir=s.get("templates_dir", None, _str),
        suppress_for=s.get("suppress_for", d_out.suppress_for, _duration),
        dkim_selector=s.get("dkim_selector", None, _dkim_selector),
        dkim_key=s.get("dkim_key", None, _dkim_key),
        dkim_domain=s.get("dkim_domain", None, _domain),
        max_attachment_size=s.get(
            "max_attachment_size", d_out.max_attachment_size, _size(0, 2**31)
        ),
    )
    if len(problems) == before and (outbound.dkim_selector is None) != (outbound.dkim_key is None):
        problems.append("[outbound].dkim_key: dkim_selector and dkim_key go together; give both")
    elif outbound.dkim_selector is not None and outbound.dkim_domain is None:
        outbound = replace(outbound, dkim_domain=mail.address.rpartition("@")[2])

    d_hours = HoursConfig()
    before = len(problems)
    s = section(data.get("hours", {}), "hours", {"timezone", "open", "close", "days", "holidays"})
    hours = HoursConfig(
        timezone=s.get("timezone", d_hours.timezone, _timezone),
        open=s.get("open", d_hours.open, _clock_time),
        close=s.get("close", d_hours.close, _clock_time),
        days=s.get(
            "days", d_hours.days, _list(_choice("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
        ),
        holidays=s.get("holidays", d_hours.holidays, _holidays),
    )
    if len(problems) == before and hours.open >= hours.close:
        problems.append("[hours].close: must be later than [hours].open")

    d_limits = LimitsConfig()
    s = section(
        data.get("limits", {}), "limits", {"acks_per_hour", "tickets_per_hour", "max_recipients"}
    )
    limits = LimitsConfig(
        acks_per_hour=s.get("acks_per_hour", d_limits.acks_per_hour, _int(0, 100_000)),
        tickets_per_hour=s.get("tickets_per_hour", d_limits.tickets_per_hour, _int(1, 100_000)),
        max_recipients=s.get("max_recipients", d_limits.max_recipients, _int(1, 10_000)),
    )

    s = section(data.get("metrics", {}), "metrics", {"host", "port"})
    metrics = MetricsConfig(
        host=s.get("host", "127.0.0.1", _str), port=s.get("port", None, _int(0, 65535))
    )

    s = section(data.get("secrets", {}), "secrets", {"vault", "key", "ttl", "base_url"})
    sealing = s.get("key", None, _secrets_key)
    if sealing is None and os.environ.get("MAILGATE_SECRETS_KEY"):
        try:
            sealing = _secrets_key(os.environ["MAILGATE_SECRETS_KEY"])
        except ValueError as exc:
            problems.append(f"$MAILGATE_SECRETS_KEY: {exc}")
    secrets = SecretsConfig(
        vault=s.get("vault", sealing is not None, _bool),
        key=sealing,
        ttl=s.get("ttl", timedelta(days=7), _duration),
        base_url=s.get("base_url", "", _url).rstrip("/"),
    )
    if secrets.vault and sealing is None:
        problems.append("[secrets].vault: needs [secrets].key or $MAILGATE_SECRETS_KEY")
    elif secrets.vault and metrics.port is None:
        problems.append("[secrets].vault: the links need the HTTP listener; set [metrics].port")

    s = section(
        data.get("security", {}),
        "security",
        {"verify_dkim", "require_dkim_for_commands", "agent_auth", "authserv_id", "trusted_hosts"},
    )
    require = s.get("require_dkim_for_commands", False, _bool)
    d_security = SecurityConfig()
    authserv_id = s.get("authserv_id", None, _authserv_id)
    security = SecurityConfig(
        verify_dkim=s.get("verify_dkim", False, _bool) or require,
        require_dkim_for_commands=require,
        agent_auth=s.get("agent_auth", d_security.agent_auth, _list(_choice(*AGENT_AUTH_METHODS))),
        authserv_id=authserv_id,
        trusted_hosts=s.get("trusted_hosts", None, _list(_authserv_id)),
    )

    s = section(data.get("hygiene", {}), "hygiene", {"reports"})
    hygiene = HygieneConfig(reports=s.get("reports", "ignore", _choice("ignore", "ticket")))

    d_jobs = JobsConfig()
    s = section(data.get("jobs", {}), "jobs", {"outbox_interval", "close_interval"})
    jobs = JobsConfig(
        outbox_interval=s.get("outbox_interval", d_jobs.outbox_interval, _duration),
        close_interval=s.get("close_interval", d_jobs.close_interval, _duration),
    )

    keys = {"sent_notifications", "raw_mail", "quarantine"}
    s, kept = section(data.get("retention", {}), "retention", keys), RetentionConfig()
    retention = RetentionConfig(**{k: s.get(k, getattr(kept, k), _keep_for) for k in sorted(keys)})

    d_route = RoutingConfig()
    s = section(
        data.get("routing", {}),
        "routing",
        {
            "threshold",
            "default_organization",
            "ambiguity_margin",
            "separators",
            "freemail_domains",
            "rules",
        },
    )
    raw_rules = s.data.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.append("[routing].rules: must be an array of tables ([[routing.rules]])")
        raw_rules = []
    routing = RoutingConfig(
        threshold=s.get("threshold", d_route.threshold, _number(0, 100)),
        default_organization=s.get("default_organization", None, _str),
        ambiguity_margin=s.get("ambiguity_margin", d_route.ambiguity_margin, _number(0, 100)),
        separators=s.get("separators", d_route.separators, _list(_choice(":", "-", "|"))),
        freemail_domains=s.get("freemail_domains", (), _list(_domain)),
        rules=tuple(_rule(raw, index, problems) for index, raw in enumerate(raw_rules)),
    )
    if ":" not in routing.separators:
        routing = replace(routing, separators=(":", *routing.separators))

    s = section(data.get("tickets", {}), "tickets", {"close_after", "tag", "notify_closed"})
    tickets = TicketsConfig(
        close_after=s.get("close_after", TicketsConfig().close_after, _duration),
        tag=s.get("tag", TicketsConfig().tag, _tag),
        notify_closed=s.get("notify_closed", True, _bool),
    )

    s = section(
        data.get("agents", {}), "agents", {"addresses", "notify", "assign_on_reply", "digest"}
    )
    agents = AgentsConfig(
        addresses=s.get("addresses", (), _list(_email)),
        notify=s.get("notify", None, _list(_email)),
        assign_on_reply=s.get("assign_on_reply", True, _bool),
        digest=s.get("digest", None, _clock_time),
    )
    support = parse_support(section(data.get("support", {}), "support", SUPPORT_KEYS))
    for key, addresses in (
        ("[agents].addresses", agents.addresses),
        ("[agents].notify", agents.notify or ()),
        ("[support].emergency_notify", support.emergency_notify or ()),
    ):
        for email in addresses:
            if mail.receives(email):
                # Its notifications would come back to us and be dropped as our own loop.
                problems.append(
                    f"{key}: {email!r} is inside [mail] domains, so mailgate would "
                    "take the mail sent to it; set [mail] recipients to the addresses mailgate "
                    f'receives, without this one (e.g. recipients = ["{mail.address}"]), and '
                    "deliver the agent's mail to its own mailbox"
                )

    raw_orgs = data.get("organizations", [])
    if not isinstance(raw_orgs, list):
        problems.append("[[organizations]]: must be an array of tables ([[organizations]])")
        raw_orgs = []
    organizations: list[OrganizationConfig] = []
    labels: list[str] = []  # each one's place in the file, for the checks across them
    seen: set[str] = set()
    for index, raw in enumerate(raw_orgs):
        label = f"organizations[{index + 1}]"
        before = len(problems)
        s = section(
            raw,
            label,
            {
                "name",
                "aliases",
                "domains",
                "members",
                "followers",
                "agencies",
                "primary_for",
                "language",
            },
        )
        if "name" not in s.data:
            problems.append(f"{label}.name: missing")
            continue
        org = OrganizationConfig(
            name=s.get("name", "", _str),
            aliases=s.get("aliases", (), _list(_str)),
            domains=s.get("domains", (), _list(_domain)),
            members=s.get("members", (), _list(_email)),
            followers=s.get("followers", (), _list(_email)),
            agencies=s.get("agencies", (), _list(_str)),
            primary_for=s.get("primary_for", (), _list(_email)),
            language=s.get("language", None, _choice("de", "en")),
        )
        if len(problems) == before:
            strangers = sorted(set(org.primary_for) - set(org.members))
            if strangers:
                problems.append(f"{label}.primary_for: {strangers[0]!r} is not in members")
            strangers = sorted(set(org.followers) - set(org.members))
            if strangers:
                # Followers see every new ticket's content: only members may (user rule).
                problems.append(
                    f"{label}.followers: {strangers[0]!r} is not a member of {org.name}; "
                    "only members may follow an organization"
                )
        if org.name.casefold() in seen:
            problems.append(f"{label}.name: {org.name!r} is defined twice")
        seen.add(org.name.casefold())
        organizations.append(org)
        labels.append(label)

    names = {o.casefold() for o in seen} | known
    for label, org in zip(labels, organizations, strict=True):
        for agency in org.agencies:
            if agency.casefold() not in names:
                problems.append(f"{label}.agencies: {agency!r} is not an organization")
    for index, rule in enumerate(routing.rules):
        if rule.organization and rule.organization.casefold() not in names:
            problems.append(
                f"routing.rules[{index + 1}].organization: {rule.organization!r} "
                "is not an organization"
            )
    if routing.default_organization and routing.default_organization.casefold() not in names:
        problems.append(
            f"[routing].default_organization: {routing.default_organization!r} "
            "is not an organization"
        )
    if problems:
        raise ConfigProblems(problems)
    return Config(
        server=server,
        database=database,
        mail=mail,
        outbound=outbound,
        routing=routing,
        tickets=tickets,
        agents=agents,
        organizations=tuple(organizations),
        hours=hours,
        support=support,
        jobs=jobs,
        retention=retention,
        limits=limits,
        metrics=metrics,
        secrets=secrets,
        security=security,
        hygiene=hygiene,
        source=source,
    )
