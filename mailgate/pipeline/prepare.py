"""The first stage: raw bytes to what the later stages read, with no database.

Under ``serve`` this runs in a parser process, so the single writer only gathers, decides
and writes. :func:`prepare` never raises: input that is no mail comes back
:class:`~mailgate.pipeline.reading.Unreadable`, to be kept in quarantine with the reason.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from mailgate.config import Config
from mailgate.dkim_check import DkimResult, DnsLookup
from mailgate.dkim_check import verify as verify_dkim
from mailgate.newlines import as_lf
from mailgate.parser import UnparseableMessage, parse, synthesized_message_id
from mailgate.pipeline.inputs import Hints, prefetch
from mailgate.pipeline.reading import InboundEnvelope, Mail, Unreadable, read
from mailgate.routing import Router

UNPARSEABLE = "unparseable"  # reason prefix: the input is no mail (pipe exit 65)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A mail after the pure part of ingest: read (or why it cannot be) and checked.

    ``digests`` (dedup key, SHA-256) and ``hints`` are work the store would otherwise do
    under the write lock; the single SQLite writer is the one serial stage, so whatever
    needs no database is done here, in a parser process under ``serve``.
    """

    raw: bytes
    envelope: InboundEnvelope
    now: datetime
    mail: Mail | Unreadable
    message_id: str
    digests: tuple[str, str] | None = None
    hints: Hints | None = None

    @property
    def dkim(self) -> DkimResult | None:
        return self.mail.dkim if isinstance(self.mail, Mail) else None


def wants_dkim(config: Config, sender: str) -> bool:
    """DKIM is checked (DNS and RSA: costly) for every mail when ``verify_dkim`` asks, else
    only for mail From an agent address when ``agent_auth`` counts on it."""
    security = config.security
    if security.verify_dkim:
        return True
    return "dkim" in security.agent_auth and sender in config.agents.addresses


def prepare(
    config: Config,
    raw: bytes,
    envelope: InboundEnvelope,
    now: datetime,
    dkim_dns: DnsLookup | None = None,
    router: Router | None = None,
) -> Prepared:
    """Parse and read one mail without the database; never raises for any input.

    With ``router`` (built from ``config``) it also computes ahead what decide will likely
    need (:func:`~mailgate.pipeline.inputs.prefetch`).
    """
    try:
        message = parse(raw)
    except UnparseableMessage as exc:
        reason = f"{UNPARSEABLE}: {exc}"
        return Prepared(raw, envelope, now, Unreadable(reason), synthesized_message_id(raw))
    mail = read(message, envelope)
    if wants_dkim(config, mail.sender):
        mail = replace(mail, dkim=verify_dkim(raw, dkim_dns))
    digests = (dedup_key(message.message_id, raw), hashlib.sha256(raw).hexdigest())
    hints = prefetch(router, mail) if router is not None else None
    return Prepared(raw, envelope, now, mail, message.message_id, digests, hints)


# Header fields that identify a mail; trace fields (Received, Return-Path, DKIM, ARC, …)
# are added in transit and differ between two deliveries of the same mail.
_IDENTITY_FIELDS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id")


def dedup_key(message_id: str, raw: bytes) -> str:
    """The idempotency key: the Message-ID plus what the sender wrote.

    A redelivery of the same mail (an MTA retrying after 451, the same mail via two MX
    hosts, CRLF or LF line endings) gets the same key and is a duplicate. A *different*
    mail that reuses a Message-ID (broken mailers, scanners, test tools do) gets another
    key and is stored, because mailgate never drops mail it answered 250 for.

    The text is read with line endings made LF, in pieces, so a large mail is never
    copied whole (the key of a mail must not change between versions: stored keys decide
    what a redelivery is).
    """
    pieces = _lf_pieces(raw)
    head = b""
    body_start = b""
    for piece in pieces:
        # The previous piece's last byte may be the first "\n" of the blank line.
        index = (head[-1:] + piece).find(b"\n\n")
        if index >= 0:
            split = len(head) - len(head[-1:]) + index
            head += piece
            head, body_start = head[:split], head[split + 2 :]
            break
        head += piece
    else:
        pieces = iter(())  # no blank line: all header, no body
    # A field's lines, joined once at the end: adding each folded line to the field's bytes
    # copied them all again, quadratic in a 1 MB folded Subject.
    folded: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and folded:
            folded[-1].append(line.strip())
        else:
            folded.append([line.strip()])
    fields = [b" ".join(lines) for lines in folded]
    digest = hashlib.sha256(message_id.encode("utf-8", "replace"))
    # Only identity fields are hashed; dropping the others before the sort keeps the order.
    identity = []
    for field in fields:
        name, _, value = field.partition(b":")
        name = name.strip().lower()
        if name in _IDENTITY_FIELDS:
            identity.append((field, name, value))
    for _, name, value in sorted(identity):
        digest.update(b"\0" + name + b":" + b" ".join(value.split()))
    digest.update(b"\0")
    # The body without trailing whitespace: whitespace is held back until more text follows.
    held = b""
    for piece in itertools.chain((body_start,), pieces):
        kept = piece.rstrip()
        if kept:
            digest.update(held + kept)
            held = piece[len(kept) :]
        else:
            held += piece
    return digest.hexdigest()


_PIECE = 1 << 20


def _lf_pieces(raw: bytes) -> Iterator[bytes]:
    """``raw`` with CRLF and lone CR as LF, about a megabyte at a time."""
    view = memoryview(raw)
    start, size = 0, len(raw)
    while start < size:
        end = min(size, start + _PIECE)
        while end < size and raw[end - 1] == 0x0D:  # a CR's partner may be the next byte
            end += 1
        piece = raw if end - start == size else bytes(view[start:end])
        yield as_lf(piece)
        start = end
