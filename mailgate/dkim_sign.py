"""DKIM signing of outbound notifications (RFC 6376), opt-in through ``[outbound] dkim_*``.

A signature lets a receiving server tie a notification to the support domain, so spam
filters and DMARC (RFC 7489) trust it. Rows keep the unsigned bytes; each attempt signs
them just before they leave, for SMTP and maildir alike, so a retry carries a fresh ``t=``.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim

from mailgate.config import Config
from mailgate.errors import ConfigError
from mailgate.outbound import ascii_domain

# What the signature covers: every header a reader sees or a client threads by.
# Relaxed/relaxed canonicalisation survives relays that refold headers or trim spaces.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
)


@dataclass(frozen=True, slots=True)
class DkimSigner:
    selector: bytes
    domain: bytes
    key: bytes  # the PEM private key; config loading checked that dkimpy can parse it

    @classmethod
    def from_config(cls, config: Config) -> DkimSigner | None:
        """The signer ``[outbound]`` asks for, or None when DKIM signing is off."""
        out = config.outbound
        if out.dkim_selector is None or out.dkim_key is None or out.dkim_domain is None:
            return None
        try:
            with open(out.dkim_key, "rb") as file:
                key = file.read()
        except OSError as exc:  # checked at config load, gone since: say so, no traceback
            raise ConfigError(f"[outbound].dkim_key: cannot read {out.dkim_key!r}: {exc}") from exc
        return cls(out.dkim_selector.encode(), ascii_domain(out.dkim_domain).encode(), key)

    def sign(self, message: bytes) -> bytes:
        """The message with its ``DKIM-Signature`` header on top."""
        signature = dkim.sign(
            message,
            self.selector,
            self.domain,
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[name.encode() for name in SIGNED_HEADERS],
        )
        return bytes(signature) + message
