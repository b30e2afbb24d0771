"""DKIM verification of inbound mail (RFC 6376), optional.

Recorded on the ledger entry so an admin can see who really sent a mail, and required,
when configured, before an agent's email commands are honoured: a forged From of an agent
must not be able to solve or move tickets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import dkim

from mailgate.routing import domain_matches

log = logging.getLogger(__name__)

DnsLookup = Callable[..., bytes | None]

_DOMAIN = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DkimResult:
    """``pass`` with the signing domain, ``fail``, or ``none`` (no signature)."""

    status: str
    domain: str | None = None

    def __str__(self) -> str:
        return f"{self.status} d={self.domain}" if self.domain else self.status

    def signed_by(self, email: str) -> bool:
        """A passing signature of the address's domain (or a parent domain of it)."""
        if self.status != "pass" or not self.domain:
            return False
        return domain_matches(email, (self.domain,))


def verify(raw: bytes, dnsfunc: DnsLookup | None = None) -> DkimResult:
    """Check the first DKIM signature; never raises (a broken signature is a ``fail``)."""
    header = re.search(rb"^DKIM-Signature:(.*(?:\r?\n[ \t].*)*)", raw, re.MULTILINE | re.IGNORECASE)
    if header is None:
        return DkimResult("none")
    match = _DOMAIN.search(re.sub(rb"\s+", b" ", header.group(1)))
    domain = match.group(1).decode("ascii", "replace").lower() if match else None
    try:
        ok = dkim.verify(raw, dnsfunc=dnsfunc) if dnsfunc else dkim.verify(raw)
    except Exception as exc:  # dkimpy raises on malformed input and DNS trouble alike
        log.info("DKIM check failed: %s", exc)
        ok = False
    return DkimResult("pass" if ok else "fail", domain)
