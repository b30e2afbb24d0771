"""``mailgate secrets``: list the vault (never a value), purge expired values, check the key."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mailgate.config import Config
from mailgate.errors import ConfigError, Refused


def add_parser(sub: Any, command: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """The ``secrets`` subcommands, on the CLI's parser."""
    secrets = command(sub, "secrets", "credentials kept behind one-time links ([secrets] vault)")
    ssub = secrets.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    p = command(ssub, "list", "every stored secret: ticket, state, links (never the value)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(ssub, "purge", "delete the values of expired secrets")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--now", metavar="ISO8601", help="pretend it is this time (default: now)")
    p.add_argument("--json", action="store_true", help="print JSON")
    command(ssub, "check", "whether the configured key opens every stored value")


def run(args: argparse.Namespace, config: Config, store: Any, now: datetime) -> int:
    from mailgate.vault.store import check_key, listing, purge

    try:
        if args.secrets_command == "list":
            with store.transaction() as session:
                rows = listing(session, now)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                who = f" by {row['revealed_by']}" if row["revealed_by"] else ""
                print(
                    f"{row['id']:>6}  ticket {row['ticket']:<6} secret {row['number']:<3} "
                    f"{row['state']:<8} expires {row['expires_at']}{who}  links {row['links']}"
                )
        elif args.secrets_command == "purge":
            if args.now:
                now = _when(args.now)
            with store.transaction() as session:
                gone = [(r.id, r.ticket_id, r.number) for r in purge(session, now, args.dry_run)]
                if args.dry_run:
                    session.rollback()
            verb = "would delete" if args.dry_run else "deleted"
            if args.json:
                print(json.dumps({"dry_run": args.dry_run, "purged": [g[0] for g in gone]}))
            else:
                print(f"{verb} {len(gone)} expired secret value(s)")
                for secret_id, ticket, number in gone:
                    print(f"  {secret_id}: ticket {ticket}, secret {number}")
        else:
            if config.secrets.key is None:
                raise Refused("no key: set [secrets] key or $MAILGATE_SECRETS_KEY")
            with store.transaction() as session:
                opened, total = check_key(session, config)
            if opened < total:
                raise Refused(
                    f"{total - opened} of {total} stored secret(s) cannot be decrypted: "
                    "[secrets] key (or $MAILGATE_SECRETS_KEY) is not the key they were "
                    "stored with"
                )
            print(f"the key opens all {total} stored secret value(s)")
    finally:
        store.close()
    return 0


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(f"--now {text!r}: an ISO 8601 time with offset, e.g. 2026-11-26T10:00Z")
    return when
