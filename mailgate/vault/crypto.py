"""Sealing a secret's value, and the tokens of its links. Pure apart from randomness.

AES-256-GCM (``cryptography``): the value cannot be read, nor changed unnoticed, without the
key of ``[secrets] key``, which lives in the config or the environment and never in the
database. The associated data names the ticket, comment and number the value belongs to,
so a ciphertext copied onto another row does not open there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailgate.errors import MailgateError

NONCE_BYTES = 12


class Unreadable(MailgateError):
    """The value cannot be decrypted: another key than the one it was sealed with."""


def _context(ticket_id: int, comment_id: int, number: int) -> bytes:
    return f"mailgate-secret:{ticket_id}:{comment_id}:{number}".encode()


def seal(
    key: bytes, value: str, ticket_id: int, comment_id: int, number: int
) -> tuple[bytes, bytes]:
    """The ciphertext and its nonce (random: a key seals many values)."""
    nonce = os.urandom(NONCE_BYTES)
    data = AESGCM(key).encrypt(nonce, value.encode(), _context(ticket_id, comment_id, number))
    return data, nonce


def open_sealed(
    key: bytes, data: bytes, nonce: bytes, ticket_id: int, comment_id: int, number: int
) -> str:
    """The value; :class:`Unreadable` with another key or a tampered row."""
    try:
        plain = AESGCM(key).decrypt(nonce, data, _context(ticket_id, comment_id, number))
    except InvalidTag:
        raise Unreadable(
            "the secret cannot be decrypted: [secrets] key (or $MAILGATE_SECRETS_KEY) is not "
            "the key it was stored with"
        ) from None
    return plain.decode()


def new_token() -> str:
    """A link's token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token: its SHA-256, so a copy of it opens no link."""
    return hashlib.sha256(token.encode()).hexdigest()


def page_token(key: bytes, token: str) -> str:
    """The reveal form's token: only a page served by us knows it, so another site that
    learnt a link cannot make a browser reveal it."""
    return hmac.new(key, f"reveal:{token}".encode(), hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    """Tokens compared in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())
