"""What an agent's mail asks for: ``#status``, ``#org``, ``#requester``, ``#cc``, ``#assign``,
``#note``.

Agents work from their mail client, so lines at the top of their reply are commands. This
module reads them and checks each one without the database: an unknown or refused command
changes nothing and its line comes back with the explanation the agent is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.policy import default as _POLICY

from mailgate.config import Config
from mailgate.models import Status
from mailgate.pipeline.filters import is_ours
from mailgate.routing import NameMatch, Router

COMMANDS = ("status", "org", "requester", "cc", "assign", "note", "private")
UNASSIGNED = ""  # the value of an ``assignee`` change that leaves the ticket to nobody
# The line of the change ``[agents] assign_on_reply`` adds: the answer itself is the record.
FIRST_ANSWER = "#assign me (the first public answer)"
PRIVATE = ("note", "private")  # the comment stays internal
_COMMAND_LINE = re.compile(r"^#(?P<name>[a-z]+)\b[ \t]*(?P<argument>.*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Command:
    """One ``#command argument`` line from the top of an agent's mail."""

    name: str
    argument: str
    line: str


@dataclass(frozen=True, slots=True)
class Change:
    """A checked command: which field of the ticket it sets, to what, and the line it came from."""

    # "status" | "organization" | "requester" | "cc_add" | "cc_remove" | "assignee"
    field: str
    value: str
    line: str


def split_commands(body: str) -> tuple[tuple[Command, ...], str]:
    """Commands on the lines at the top of the body, and the body without them.

    Only the leading block counts (blank lines allowed between commands), so a ``#`` later
    in the text — a hashtag, a shell comment in a quoted log — is just text.
    """
    lines = body.split("\n")
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        match = _COMMAND_LINE.match(line)
        if match is None:
            break
        commands.append(Command(match.group("name").lower(), match.group("argument"), line))
        index += 1
    if not commands:
        return (), body
    return tuple(commands), "\n".join(lines[index:]).strip()


def is_private(commands: Iterable[Command]) -> bool:
    return any(c.name in PRIVATE for c in commands)


def check_commands(
    commands: Iterable[Command], router: Router, sender: str
) -> tuple[tuple[Change, ...], tuple[str, ...]]:
    """The changes the commands of ``sender`` (an agent) make, in order, and one
    explanation per refused line."""
    changes: list[Change] = []
    errors: list[str] = []
    for command in commands:
        if command.name in PRIVATE:
            continue
        change = _check(command, router, sender)
        if isinstance(change, Change):
            changes.append(change)
        else:
            errors.append(f"{command.line}: {change}")
    return tuple(changes), tuple(errors)


def _check(command: Command, router: Router, sender: str) -> Change | str:
    """The change one command makes, or why it is refused."""
    if command.name not in COMMANDS:
        return f"unknown command; known are {', '.join('#' + c for c in COMMANDS)}"
    if not command.argument:
        return "needs an argument"
    if command.name == "status":
        status = command.argument.lower()
        if status not in (Status.OPEN, Status.PENDING, Status.SOLVED):
            return "status must be open, pending or solved"
        return Change("status", status, command.line)
    if command.name == "org":
        # The same name matching, threshold and ambiguity rule as a subject prefix.
        match = router.match_name(command.argument)
        if match.problem == NameMatch.NONE:
            return f"no organization matches {command.argument!r}"
        if match.problem == NameMatch.AMBIGUOUS:
            first, second = match.candidates[0][0], match.candidates[1][0]
            return f"{command.argument!r} is ambiguous: {first} or {second}"
        assert match.organization is not None
        return Change("organization", match.organization, command.line)
    if command.name == "cc":
        return _check_cc(command, router.config)
    if command.name == "assign":
        return _check_assign(command, router.config, sender)
    email = command.argument.strip("<>").lower()  # requester
    if "@" not in email or " " in email:
        return f"{command.argument!r} is not an email address"
    return Change("requester", email, command.line)


def _check_cc(command: Command, config: Config) -> Change | str:
    """``#cc add ADDRESS`` copies someone on the ticket (again), ``#cc remove`` stops it."""
    action, _, argument = command.argument.partition(" ")
    if action.lower() not in ("add", "remove"):
        return "use #cc add ADDRESS or #cc remove ADDRESS"
    email = command_address(argument.strip())
    if email is None:
        return f"{argument.strip()!r} is not one email address"
    if email in config.agents.addresses or is_ours(email, config):
        # Agents see every ticket already; our own addresses would mail ourselves (a loop).
        return f"{email} is one of our own addresses, never a participant"
    return Change(f"cc_{action.lower()}", email, command.line)


def _check_assign(command: Command, config: Config, sender: str) -> Change | str:
    """``#assign me``, ``#assign ADDRESS`` (an agent) or ``#assign none``."""
    argument = command.argument.strip()
    if argument.lower() == "none":
        return Change("assignee", UNASSIGNED, command.line)
    email = sender if argument.lower() == "me" else command_address(argument)
    if email is None:
        return f"{argument!r} is not one email address; use #assign me, ADDRESS or none"
    if email not in config.agents.addresses:
        return f"{email} is not an agent address ([agents] addresses): only agents handle tickets"
    return Change("assignee", email, command.line)


def command_address(text: str) -> str | None:
    """The one address an agent typed (``a@b``, ``<a@b>``, ``Name <a@b>``), lower-cased.

    Parsed by the stdlib's RFC 5322 header parser, not by splitting text: anything it finds
    fault with, more or fewer than one mailbox, a group, a missing local part or domain, or
    a line break (which could start a header of its own in our mail) is no address.
    """
    if not text or "\r" in text or "\n" in text:
        return None
    try:
        header = _POLICY.header_factory("to", text)
        addresses = header.addresses
        groups = header.groups
    except Exception:  # the stdlib parser raises on some hostile input (IndexError too)
        return None
    if header.defects or len(addresses) != 1 or groups[0].display_name is not None:
        return None
    address = addresses[0]
    if not address.username or not address.domain or "@" in address.username:
        return None
    email: str = address.addr_spec.lower()
    return email if "@" in email and email.isprintable() and " " not in email else None
