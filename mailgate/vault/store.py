"""The vault's rows: values written with their comment, links with the agent's mail, the
one reveal, and the purge of what expired.

Only the SHA-256 of a link's token is stored; the token itself is in the agent's mail alone.
A reveal empties the value in the transaction that records it, so two clicks at once reveal
it once: the second finds it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db.records import user_id
from mailgate.models import AuthorKind, Comment, Secret, SecretLink, table_of
from mailgate.vault.crypto import Unreadable, new_token, open_sealed, seal, token_hash

_SECRETS = table_of(Secret)


def vault_key(config: Config) -> bytes:
    """The key; only asked for when ``[secrets] vault`` is on, which config checks needs one."""
    key = config.secrets.key
    if key is None:
        raise ValueError("[secrets] vault needs a key")
    return key


def base_url(config: Config) -> str:
    """Where the links point: ``[secrets] base_url``, else the HTTP listener itself."""
    if config.secrets.base_url:
        return config.secrets.base_url
    return f"http://{config.metrics.host}:{config.metrics.port}"


def store_secrets(
    conn: Connection,
    config: Config,
    ticket_id: int,
    comment_id: int,
    values: Sequence[str],
    now: datetime,
) -> None:
    """Seal the values the comment refers to as ``[secret 1]``, ``[secret 2]`` …"""
    key = vault_key(config)
    expires = now + config.secrets.ttl
    for number, value in enumerate(values, 1):
        data, nonce = seal(key, value, ticket_id, comment_id, number)
        conn.execute(
            insert(_SECRETS).values(
                ticket_id=ticket_id,
                comment_id=comment_id,
                number=number,
                ciphertext=data,
                nonce=nonce,
                created_at=now,
                expires_at=expires,
            )
        )


def make_links(
    session: Session, config: Config, comment_id: int, recipient: str, now: datetime
) -> list[dict[str, Any]]:
    """One new link per secret of the comment still to be revealed, for this recipient."""
    rows = session.scalars(
        select(Secret)
        .where(
            Secret.comment_id == comment_id,
            Secret.ciphertext.is_not(None),
            Secret.revealed_at.is_(None),
            Secret.expires_at > now,
        )
        .order_by(Secret.number)
    ).all()
    links = []
    for row in rows:
        token = new_token()
        session.add(
            SecretLink(
                secret_id=row.id, recipient=recipient, token_hash=token_hash(token), created_at=now
            )
        )
        links.append(
            {
                "number": row.number,
                "url": f"{base_url(config)}/secret/{token}",
                "expires": row.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
            }
        )
    session.flush()
    return links


@dataclass(frozen=True, slots=True)
class LinkState:
    """What a link leads to: ``unknown``, ``expired``, ``used``, ``ready`` or ``revealed``
    (then ``value`` holds the value, shown once)."""

    state: str
    number: int = 0
    ticket_id: int = 0
    revealed_at: datetime | None = None
    value: str | None = None


def _find(session: Session, token: str, lock: bool) -> tuple[SecretLink, Secret] | None:
    query = (
        select(SecretLink, Secret)
        .join(Secret, Secret.id == SecretLink.secret_id)
        .where(SecretLink.token_hash == token_hash(token))
    )
    found = session.execute(query.with_for_update(of=Secret) if lock else query).first()
    return None if found is None else (found[0], found[1])


def _state(secret: Secret, now: datetime) -> LinkState:
    if secret.revealed_at is not None:
        return LinkState("used", secret.number, secret.ticket_id, secret.revealed_at)
    if secret.expires_at <= now or secret.ciphertext is None:
        return LinkState("expired", secret.number, secret.ticket_id)
    return LinkState("ready", secret.number, secret.ticket_id)


def look_up(session: Session, token: str, now: datetime) -> LinkState:
    """The link's state, changing nothing (a mail client's link scanner only looks)."""
    found = _find(session, token, lock=False)
    return LinkState("unknown") if found is None else _state(found[1], now)


def reveal(session: Session, config: Config, token: str, now: datetime) -> LinkState:
    """Decrypt the value, empty it and note on the ticket who revealed which secret, when.

    :class:`~mailgate.vault.crypto.Unreadable` (a wrong key) leaves everything as it was.
    """
    found = _find(session, token, lock=True)
    if found is None:
        return LinkState("unknown")
    link, secret = found
    state = _state(secret, now)
    if state.state != "ready":
        return state
    assert secret.ciphertext is not None and secret.nonce is not None
    value = open_sealed(
        vault_key(config),
        secret.ciphertext,
        secret.nonce,
        secret.ticket_id,
        secret.comment_id,
        secret.number,
    )
    taken = session.connection().execute(
        update(_SECRETS)
        .where(_SECRETS.c.id == secret.id, _SECRETS.c.revealed_at.is_(None))
        .values(ciphertext=None, nonce=None, revealed_at=now, revealed_by=link.recipient)
    )
    if taken.rowcount != 1:  # another reveal came first (SQLite: no row lock to wait on)
        return LinkState("used", secret.number, secret.ticket_id, now)
    system = user_id(session.connection(), config.mail.address, "mailgate", now)
    session.add(
        Comment(
            ticket_id=secret.ticket_id,
            author_id=system,
            author_kind=AuthorKind.SYSTEM.value,
            body=(
                f"Secret {secret.number} revealed by {link.recipient} at "
                f"{now:%Y-%m-%d %H:%M:%S} UTC through a one-time link; the value is no "
                "longer stored."
            ),
            public=False,
            created_at=now,
        )
    )
    session.flush()
    return LinkState("revealed", secret.number, secret.ticket_id, now, value)


def purge(session: Session, now: datetime, dry_run: bool = False) -> list[Secret]:
    """Delete the values of expired secrets (``mailgate secrets purge``); the rows stay, so
    a link still says "expired" and the ticket keeps its ``[secret N]``."""
    rows = list(
        session.scalars(
            select(Secret)
            .where(Secret.expires_at <= now, Secret.ciphertext.is_not(None))
            .order_by(Secret.id)
        )
    )
    if not dry_run:
        for row in rows:
            row.ciphertext, row.nonce = None, None
        session.flush()
    return rows


def listing(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Every stored secret without its value: where it is, its state, its links."""
    counts: dict[int, int] = {}
    for secret_id in session.scalars(select(SecretLink.secret_id)):
        counts[secret_id] = counts.get(secret_id, 0) + 1
    result = []
    for row in session.scalars(select(Secret).order_by(Secret.id)):
        result.append(
            {
                "id": row.id,
                "ticket": row.ticket_id,
                "comment": row.comment_id,
                "number": row.number,
                "state": _state(row, now).state,
                "created_at": row.created_at.isoformat(),
                "expires_at": row.expires_at.isoformat(),
                "revealed_at": row.revealed_at.isoformat() if row.revealed_at else None,
                "revealed_by": row.revealed_by,
                "links": counts.get(row.id, 0),
            }
        )
    return result


def check_key(session: Session, config: Config) -> tuple[int, int]:
    """How many stored values the configured key opens, of how many (values stay sealed)."""
    key, opened, total = vault_key(config), 0, 0
    for row in session.scalars(select(Secret).where(Secret.ciphertext.is_not(None))):
        total += 1
        assert row.ciphertext is not None and row.nonce is not None
        try:
            open_sealed(key, row.ciphertext, row.nonce, row.ticket_id, row.comment_id, row.number)
        except Unreadable:
            continue
        opened += 1
    return opened, total
