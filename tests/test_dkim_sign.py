"""Outbound DKIM signing: a receiver holding the published key verifies every notification."""

from __future__ import annotations

import base64
import mailbox
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailgate.config import Config
from mailgate.dkim_sign import SIGNED_HEADERS
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.store import Store

from .conftest import AUTHENTICATED, BASE_CONFIG, Clock, _merge, mail, run_cli, toml_dumps
from .sink import Sink

SELECTOR = "mail2026"
DOMAIN = "support.example.com"  # the domain of [mail] address in the test config


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh RSA key (openssl, as the README tells admins) and its DNS TXT record."""
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    genrsa = ["openssl", "genrsa", "-out", str(path), "2048"]
    subprocess.run(genrsa, check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def _dns(record: bytes) -> Callable[..., bytes | None]:
    """dkimpy's DNS hook: the TXT record at <selector>._domainkey.<domain>, nothing else."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return lookup


@pytest.fixture
def signing_relay(make_config: Any, sink: Sink, key: tuple[Path, bytes]) -> Config:
    """Relaying to the sink, signing with the test key under SELECTOR."""
    outbound = {
        "transport": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "dkim_selector": SELECTOR,
        "dkim_key": str(key[0]),
    }
    config: Config = make_config({"outbound": outbound}, name="dkim.toml")[0]
    return config


def test_notifications_relayed_by_smtp_carry_a_valid_signature(
    signing_relay: Config, store: Store, sink: Sink, clock: Clock, key: tuple[Path, bytes]
) -> None:
    """The bytes the relay receives verify against the published key; a changed body fails."""
    _, record = key
    config = signing_relay
    assert config.outbound.dkim_domain == DOMAIN  # the default: [mail] address's domain
    ingest(store, config, mail(), InboundEnvelope(), clock())
    stats = Jobs(store, config).deliver_outbox(clock())
    assert stats.sent == 3  # the acknowledgement, the follower's and the agent's notices
    for received in sink.received:
        raw = received.data
        assert raw.startswith(b"DKIM-Signature:")
        assert dkim.verify(raw, dnsfunc=_dns(record))
        signature = received.message["DKIM-Signature"]
        tags = dict(t.strip().split("=", 1) for t in str(signature).split(";") if "=" in t)
        assert (tags["d"], tags["s"], tags["c"]) == (DOMAIN, SELECTOR, "relaxed/relaxed")
        signed = {h.strip().lower() for h in tags["h"].split(":")}
        assert signed == {h.lower() for h in SIGNED_HEADERS}
        # A relay refolding headers is fine (relaxed); a changed word of the body is not.
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Drucker" in body or b"Ticket" in body
        tampered = head + b"\r\n\r\n" + body.replace(b"Ticket", b"Tickets", 1)
        assert tampered != raw
        assert not dkim.verify(tampered, dnsfunc=_dns(record))
        # A key other than the published one does not verify either.
        assert not dkim.verify(raw, dnsfunc=_dns(b"v=DKIM1; k=rsa; p=" + record[-64:]))


def test_an_agent_reply_with_files_verifies(
    signing_relay: Config, store: Store, sink: Sink, clock: Clock, key: tuple[Path, bytes]
) -> None:
    """The signature covers the final bytes, files included: a changed byte of one fails."""
    _, record = key
    config = signing_relay
    created = ingest(store, config, mail(), InboundEnvelope(), clock())
    answer = EmailMessage()
    answer["From"], answer["To"] = "Tech <tech@support.example.com>", "support@support.example.com"
    answer["Subject"] = f"Re: [#{created.ticket}] Drucker kaputt"
    answer["Authentication-Results"] = AUTHENTICATED.split(":", 1)[1].strip()
    answer.set_content("Anbei die Anleitung.\n")
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 64
    answer.add_attachment(pdf, maintype="application", subtype="pdf", filename="Übersicht.pdf")
    ingest(store, config, answer.as_bytes(), InboundEnvelope(), clock())
    Jobs(store, config).deliver_outbox(clock())
    (received,) = [
        r
        for r in sink.received
        if r.rcpt_to == ["anna@mueller-logistik.de"] and b"application/pdf" in r.data
    ]
    assert dkim.verify(received.data, dnsfunc=_dns(record))
    (part,) = received.message.iter_attachments()
    assert part.get_content() == pdf
    head, _, body = received.data.partition(b"\r\n\r\n")
    encoded = body.rsplit(b"\r\n\r\n", 1)[0][-60:]  # inside the PDF's base64
    tampered = head + b"\r\n\r\n" + body.replace(encoded, encoded[:-1] + b"A", 1)
    assert tampered != received.data
    assert not dkim.verify(tampered, dnsfunc=_dns(record))


def test_maildir_files_are_signed_too(
    make_config: Any, store: Store, clock: Clock, key: tuple[Path, bytes], tmp_path: Path
) -> None:
    """Maildir mode writes the signed bytes, with the configured signing domain."""
    path, record = key
    outbound = {"dkim_selector": SELECTOR, "dkim_key": str(path), "dkim_domain": DOMAIN}
    config: Config = make_config({"outbound": outbound}, name="dkim.toml")[0]
    ingest(store, config, mail(), InboundEnvelope(), clock())
    assert Jobs(store, config).deliver_outbox(clock()).sent == 3
    box = mailbox.Maildir(config.outbound.maildir, create=False)
    files = [box.get_bytes(k) for k in box.iterkeys()]
    assert len(files) == 3
    for raw in files:
        assert dkim.verify(raw, dnsfunc=_dns(record))


def _check(tmp_path: Path, outbound: dict[str, Any]) -> tuple[int, str]:
    data = _merge(BASE_CONFIG, {"database": {"url": f"sqlite:///{tmp_path}/db.sqlite"}})
    path = tmp_path / "bad.toml"
    path.write_text(toml_dumps(_merge(data, {"outbound": outbound})), encoding="utf-8")
    proc = run_cli(path, "check-config")
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("missing", "[outbound].dkim_key: cannot read"),
        ("unreadable", "[outbound].dkim_key: cannot read"),
        ("public", "is not a PEM RSA private key"),
        ("text", "is not a PEM RSA private key"),
    ],
)
def test_check_config_names_a_bad_key_file(
    tmp_path: Path, key: tuple[Path, bytes], what: str, expected: str
) -> None:
    """A key that is missing, unreadable or no private key: one clear line, no traceback."""
    bad = tmp_path / "dkim.pem"
    if what == "unreadable":
        bad = tmp_path / "folder.pem"
        bad.mkdir()  # reading a directory fails for root too, unlike a chmod 000 file
    elif what == "public":
        pub = subprocess.run(
            ["openssl", "rsa", "-in", str(key[0]), "-pubout"], check=True, capture_output=True
        )
        bad.write_bytes(pub.stdout)
    elif what == "text":
        bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    code, stderr = _check(tmp_path, {"dkim_selector": SELECTOR, "dkim_key": str(bad)})
    assert code != 0
    assert expected in stderr, stderr
    assert "Traceback" not in stderr


def test_check_config_wants_selector_and_key_together(
    tmp_path: Path, key: tuple[Path, bytes]
) -> None:
    """A key without a selector (or the reverse) signs nothing: said, not silently ignored."""
    for outbound in ({"dkim_key": str(key[0])}, {"dkim_selector": SELECTOR}):
        code, stderr = _check(tmp_path, outbound)
        assert code != 0
        assert "dkim_selector and dkim_key go together" in stderr, stderr
    code, stderr = _check(tmp_path, {"dkim_selector": "bad selector!", "dkim_key": str(key[0])})
    assert code != 0 and "[outbound].dkim_selector: must be DNS labels" in stderr, stderr
