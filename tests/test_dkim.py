"""DKIM: recorded on every mail when enabled; agents' commands need a valid signature."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.db.queries import get_ticket, ticket_detail
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.models import LedgerEntry, Outbox
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail

AGENT = "Tech <tech@support.example.com>"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A fresh RSA key: the private PEM and the DNS TXT record that publishes it."""
    folder = tmp_path_factory.mktemp("dkim")
    private = folder / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def signed(raw: bytes, private: bytes) -> bytes:
    signature = dkim.sign(
        raw,
        b"mg",
        b"support.example.com",
        private,
        include_headers=[b"from", b"to", b"subject", b"message-id"],
    )
    return signature + raw


def test_agent_mail_is_authenticated_by_its_dkim_signature(
    store: Store, config: Config, clock: Clock, keys: tuple[bytes, bytes]
) -> None:
    """agent_auth "dkim" (a default): mailgate checks the agent's signature itself, with
    the key served through dkimpy's DNS hook. Unsigned or tampered, the mail From the
    agent's address is an internal note, its commands undone, and the agent is told."""
    private, record = keys

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mg._domainkey.support.example.com." else None

    created = ingest(store, config, mail(), InboundEnvelope(), clock(), dkim_dns=dns)
    tid = created.ticket
    assert tid is not None
    forged = mail(sender=AGENT, subject=f"Re: [#{tid}] x", body="#status solved\n\nErledigt.")
    result = ingest(store, config, forged, InboundEnvelope(), clock(), dkim_dns=dns)
    assert "unauthenticated agent mail" in result.reason
    tampered = signed(
        mail(sender=AGENT, subject=f"Re: [#{tid}] y", body="#status solved\n\nA"), private
    ).replace(b"\r\nA", b"\r\nB")
    ingest(store, config, tampered, InboundEnvelope(), clock(), dkim_dns=dns)
    with store.transaction() as s:
        detail = ticket_detail(s, get_ticket(s, tid))
        assert detail["status"] == "new"  # as before: no agent has answered
        kinds = [(o.kind, o.recipients) for o in s.scalars(select(Outbox).order_by(Outbox.id))]
    assert kinds.count(("agent_unverified", ["tech@support.example.com"])) == 2
    assert "agent_reply" not in {kind for kind, _ in kinds}
    assert [(c["author_kind"], c["public"]) for c in detail["comments"][1:]] == [
        ("unverified_agent", False),
        ("unverified_agent", False),
    ]
    genuine = signed(
        mail(sender=AGENT, subject=f"Re: [#{tid}] x", body="#status solved\n\nJa."), private
    )
    ingest(store, config, genuine, InboundEnvelope(), clock(), dkim_dns=dns)
    with store.transaction() as s:
        detail = ticket_detail(s, get_ticket(s, tid))
        results = [r.dkim for r in s.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
    assert detail["status"] == "solved"
    last = detail["comments"][-1]
    assert (last["author_kind"], last["public"], last["authentication"]) == (
        "agent",
        True,
        "dkim=pass d=support.example.com (checked by mailgate)",
    )
    # Checked only where it counts (an agent's From): customers' mail costs no DNS query.
    assert results == [None, "none", "fail d=support.example.com", "pass d=support.example.com"]


def test_agent_commands_need_dkim(
    make_config: Callable[..., tuple[Config, Path]],
    store: Store,
    clock: Clock,
    keys: tuple[bytes, bytes],
) -> None:
    """require_dkim_for_commands: on top of agent_auth, commands only from signed mail."""
    private, record = keys

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mg._domainkey.support.example.com." else None

    config, _ = make_config({"security": {"require_dkim_for_commands": True}})
    created = ingest(store, config, mail(), InboundEnvelope(), clock(), dkim_dns=dns)
    tid = created.ticket
    assert tid is not None
    vouched = mail(
        sender=AGENT,
        subject=f"Re: [#{tid}] x",
        body="#status solved\n\nErledigt.",
        extra=AUTHENTICATED,
    )
    ingest(store, config, vouched, InboundEnvelope(), clock(), dkim_dns=dns)
    with store.transaction() as s:
        assert ticket_detail(s, get_ticket(s, tid))["status"] == "open"
        [error] = [o for o in s.scalars(select(Outbox)) if o.kind == "command_error"]
        assert "refused: commands need a valid DKIM signature" in error.payload["errors"][0]
    genuine = signed(
        mail(sender=AGENT, subject=f"Re: [#{tid}] x", body="#status solved\n\nJa."), private
    )
    ingest(store, config, genuine, InboundEnvelope(), clock(), dkim_dns=dns)
    with store.transaction() as s:
        assert ticket_detail(s, get_ticket(s, tid))["status"] == "solved"
        results = [r.dkim for r in s.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
    assert results == ["none", "none", "pass d=support.example.com"]
