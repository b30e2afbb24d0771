"""Which organization a new ticket belongs to, and why.

A ticket belongs to an organization through its requester, so the decision starts from
the sender's memberships in the config. The decision is a pure function of the sender,
the subject and the config; it returns a :class:`RouteDecision` that says why, because
"why is this ticket in org X" is the first question an admin asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config import Config, OrganizationConfig


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The organization chosen for a new ticket (None: no organization), with the reason."""

    organization: str | None
    reason: str
    score: float | None = None
    candidates: tuple[tuple[str, float], ...] = ()
    subject: str = ""


def memberships(email: str, config: Config) -> tuple[OrganizationConfig, ...]:
    """The organizations the address is a member of, in config order."""
    email = email.lower()
    return tuple(org for org in config.organizations if email in org.members)


def domain_matches(email: str, domains: tuple[str, ...]) -> bool:
    """True when the address's domain is one of ``domains`` or a subdomain of one."""
    domain = email.rpartition("@")[2].lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)


def route(sender: str, subject: str, config: Config) -> RouteDecision:
    """Route a new ticket by its sender: membership, then domain, then the default."""
    orgs = memberships(sender, config)
    if len(orgs) == 1:
        return RouteDecision(orgs[0].name, f"sender is a member of {orgs[0].name}", subject=subject)
    if orgs:
        return RouteDecision(
            orgs[0].name,
            f"sender is a member of {len(orgs)} organizations; {orgs[0].name} is first in the "
            "config",
            subject=subject,
        )
    for org in config.organizations:
        if domain_matches(sender, org.domains):
            return RouteDecision(
                org.name, f"sender's domain belongs to {org.name}", subject=subject
            )
    default = config.routing.default_organization
    if default:
        return RouteDecision(default, "routing.default_organization", subject=subject)
    return RouteDecision(None, "no organization: sender is unknown", subject=subject)
