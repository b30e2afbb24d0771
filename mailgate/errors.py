"""mailgate's own exceptions, kept apart so every layer can name them without cycles."""

from __future__ import annotations


class MailgateError(Exception):
    """Base class: an error mailgate explains to its user in one line."""


class ConfigError(MailgateError):
    """The configuration file is invalid; the message names the key and the problem."""


class StoreUnavailable(MailgateError):
    """The database cannot be written right now; the sender should retry (SMTP 451, EX_TEMPFAIL)."""


class NotFound(MailgateError):
    """A ticket, organization or user asked for by an admin does not exist."""


class Refused(MailgateError):
    """An admin change that the rules forbid (e.g. changing a closed ticket's organization)."""


class TicketLocked(Refused):
    """A closed ticket's requester and organization can no longer change (user rule)."""


class RawMailPurged(Refused):
    """A ledger entry's raw mail was purged by ``[retention]``: only its headers are left."""
