"""Config -> database: organizations, users, memberships, followers and agents.

:meth:`mailgate.store.Store.sync` decides whether the config changed since the last sync
and holds the lock that keeps instances from syncing at once; this makes the rows match.
Organizations that left the config are deactivated, never deleted (they keep their tickets);
memberships and followers added by hand (``source`` other than ``config``) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db.records import ensure_user
from mailgate.models import Follower, Membership, Organization, User

# The sections of the config that sync_config reads: Store.sync runs it again only when
# their fingerprint (mailgate.config.fingerprint) changed.
SYNCED_PARTS = ("organizations", "agents")


def sync_config(session: Session, config: Config, now: datetime) -> None:
    """Write what the config says into the session's transaction (idempotent)."""
    orgs_by_name = {o.name: o for o in session.scalars(select(Organization))}
    wanted_names = set()
    org_ids: dict[str, int] = {}
    for position, org_cfg in enumerate(config.organizations):
        org = orgs_by_name.get(org_cfg.name)
        if org is None:
            org = Organization(name=org_cfg.name, active=True, position=position)
            session.add(org)
            session.flush()
        org.active = True
        org.position = position
        wanted_names.add(org.name)
        org_ids[org_cfg.name] = org.id
    for org in orgs_by_name.values():
        if org.name not in wanted_names:
            org.active = False  # keeps its tickets; no new routing into it

    agents = set(config.agents.addresses)
    emails = set(agents)
    for org_cfg in config.organizations:
        emails.update(org_cfg.members)
        emails.update(org_cfg.followers)
    users = {email: ensure_user(session, email, "", now) for email in sorted(emails)}
    for user in session.scalars(select(User).where(User.is_agent.is_(True))):
        if user.email not in agents:
            user.is_agent = False
    for email in agents:
        users[email].is_agent = True

    links: tuple[tuple[type[Membership] | type[Follower], str], ...] = (
        (Membership, "members"),
        (Follower, "followers"),
    )
    for model, attr in links:
        wanted = {
            (users[email].id, org_ids[org_cfg.name])
            for org_cfg in config.organizations
            for email in getattr(org_cfg, attr)
        }
        rows = session.scalars(select(model).where(model.source == "config"))
        existing = {
            (row.user_id, row.organization_id): row
            for row in cast("Iterable[Membership | Follower]", rows)
        }
        for key, row in existing.items():
            if key not in wanted:
                session.delete(row)
        for user_id, org_id in wanted - set(existing):
            if session.get(model, (user_id, org_id)) is None:
                session.add(model(user_id=user_id, organization_id=org_id, source="config"))
