"""The command line: ``mailgate`` and its subcommands.

Each command loads the config, opens the store it needs and does one thing; ``serve``
hands over to :mod:`mailgate.app`, where the daemon is put together. Every failure becomes
one clear line and an exit status (sysexits(3) where an MTA reads it), never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from mailgate import __version__
from mailgate.config import Config
from mailgate.confload import load_config
from mailgate.errors import ConfigError, MailgateError, NotFound, Refused, StoreUnavailable
from mailgate.listargs import add_list_options
from mailgate.logsetup import setup_logging
from mailgate.schema import OutboxStatus, Status
from mailgate.vault import cli as vault_cli
from mailgate.views import print_detail

# sysexits(3): what Postfix's pipe(8) and procmail understand.
EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2  # also: invalid configuration
EX_DATAERR = 65  # unparseable input, kept in quarantine
EX_NOUSER = 67  # a mailbox of our domain that is not ours ([mail] recipients): bounced
EX_SOFTWARE = 70
EX_TEMPFAIL = 75  # database down: the MTA keeps the mail and retries

log = logging.getLogger("mailgate")


class CliError(MailgateError):
    def __init__(self, message: str, code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def now() -> datetime:
    return datetime.now(UTC)


def _choice(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    """Subcommands that must be given, checked after parsing by :func:`_parse`.

    argparse checks required subcommands before it looks at unknown arguments, so
    ``mailgate --bogus`` would say "required: COMMAND" and never name the flag.
    """
    group = parser.add_subparsers(dest=dest, metavar=metavar)
    parser.set_defaults(**{f"_required_{dest}": (parser, metavar)})
    return group


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, or exit 2 naming what is wrong: unknown arguments first."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for name, value in list(vars(args).items()):
        if name.startswith("_required_"):
            delattr(args, name)
            owner, metavar = value
            if getattr(args, name.removeprefix("_required_"), None) is None:
                owner.error(f"the following arguments are required: {metavar}")
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate",
        description="Inbound email-to-ticket daemon: SMTP/LMTP in, tickets out.",
    )
    parser.add_argument("--version", action="version", version=f"mailgate {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (else $MAILGATE_CONFIG, else ./mailgate.toml, else built-in defaults)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log detail on stderr (serve: info, other commands: warning)",
    )
    # Accept --config after the subcommand too, as people type it; the global one wins.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    sub = _choice(parser, "command", "COMMAND")

    def command(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        return group.add_parser(name, parents=[common], help=help)

    command(sub, "serve", help="run the SMTP/LMTP listener until SIGTERM/SIGINT")

    # An MTA expands ``--rcpt ${recipient}`` into one or many addresses, so --rcpt takes
    # several (and may repeat); FILE goes before the options or after ``--``.
    p = command(sub, "ingest", help="store one mail from a file or stdin (for MTA pipes)")
    p.usage = "mailgate ingest [FILE] [--mail-from ADDR] [--rcpt ADDR [ADDR ...]] [-- FILE]"
    p.add_argument("file", nargs="?", default="-", help="the raw mail; '-' or absent: stdin")
    p.add_argument("--mail-from", default=None, metavar="ADDR", help="envelope sender")
    p.add_argument(
        "--rcpt",
        action="extend",
        nargs="+",
        default=[],
        metavar="ADDR",
        help="envelope recipient(s); repeat it or list several",
    )

    tickets = command(sub, "tickets", help="list, show and change tickets")
    tsub = _choice(tickets, "tickets_command", "ACTION")
    p = command(tsub, "list", help="list tickets")
    p.add_argument("--org", metavar="NAME", help="only this organization's tickets")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument(
        "--assignee", metavar="EMAIL|none", help="only tickets this agent handles; none: unassigned"
    )
    add_list_options(p, ("requester", "time", "tag", "search"))
    p = command(tsub, "show", help="show one ticket with its comments")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(tsub, "attachment", help="save a stored attachment, byte for byte")
    p.add_argument("id", type=int)
    p.add_argument("which", nargs="?", metavar="N|NAME", help="its number or file name")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write it; '-': stdout (default: its file name, here, never overwritten)",
    )
    p = command(tsub, "set", help="change a ticket's status, organization, requester or assignee")
    p.add_argument("id", type=int)
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--org", metavar="NAME")
    p.add_argument("--requester", metavar="EMAIL")
    p.add_argument("--assignee", metavar="EMAIL|none", help="an agent's address, or none")
    p.add_argument("--json", action="store_true", help="print the changed ticket as JSON")

    outbox = command(sub, "outbox", help="notifications waiting, sent and failed")
    osub = _choice(outbox, "outbox_command", "ACTION")
    p = command(osub, "list", help="list outbox rows")
    # Every status but bounced, as the command has always offered.
    listed = [s.value for s in OutboxStatus if s is not OutboxStatus.BOUNCED]
    p.add_argument("--status", choices=listed)
    add_list_options(p, ("time", "search"))

    follow = command(sub, "follow", help="who is told of every new ticket in an organization")
    fsub = _choice(follow, "follow_command", "ACTION")
    for action in ("add", "remove"):
        p = command(fsub, action, help=f"{action} a follower (members only)")
        p.add_argument("email")
        p.add_argument("org")
    p = command(fsub, "list", help="list followers")
    p.add_argument("email", nargs="?", help="only this user")
    p.add_argument("org", nargs="?", help="only this organization")
    add_list_options(p, paging=False)

    jobs = command(sub, "jobs", help="scheduled work, for cron and tests")
    jsub = _choice(jobs, "jobs_command", "ACTION")
    p = command(jsub, "run", help="run every due job once: close solved tickets, send outbox")
    p.add_argument("--now", metavar="ISO8601", help="pretend it is this time (default: now)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")

    quarantine = command(sub, "quarantine", help="mail kept aside, and processing it again")
    qsub = _choice(quarantine, "quarantine_command", "ACTION")
    p = command(qsub, "list", help="list quarantined mail")
    add_list_options(p, ("time",))
    p = command(qsub, "show", help="show one quarantined mail with its error")
    p.add_argument("id", type=int)
    p.add_argument("--raw", action="store_true", help="write the raw mail, byte for byte")
    p = command(qsub, "reprocess", help="process quarantined mail again, exactly once")
    p.add_argument("id", type=int, nargs="?")
    p.add_argument("--all", action="store_true", help="every quarantined mail")

    p = command(sub, "purge", help="drop stored mail older than [retention] allows")
    p.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    p.add_argument("--vacuum", action="store_true", help="SQLite: rebuild the file (VACUUM)")
    p.add_argument("--now", metavar="ISO8601", help="pretend it is this time (default: now)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "stats", help="the ingest ledger, tickets and outbox in numbers")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "route", help="explain which organization a mail would go to (dry run)")
    p.add_argument("subject", help="the subject line, e.g. 'Müller Logistik: Drucker kaputt'")
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR", help="sender")
    p.add_argument("--to", action="append", default=[], metavar="ADDR", help="recipient")
    p.add_argument("--json", action="store_true", help="print JSON")

    vault_cli.add_parser(sub, command)
    command(sub, "check-config", help="validate the configuration and print a summary")
    command(sub, "init-db", help="create or migrate the database schema and sync the config")
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    # What was imported so far (SQLAlchemy above all) lives until the process ends: kept out
    # of the collector, whose passes over it, and above all the final one at exit, took
    # 0.1 s of every command (a third of ``tickets show``).
    gc.freeze()
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:
        # The pipe from an MTA: a mistake in its command line is the admin's to mend, and
        # until then the MTA must keep the mail (75), not bounce it (argparse's 2).
        if exc.code == EX_USAGE and "ingest" in (sys.argv[1:] if argv is None else argv):
            return EX_TEMPFAIL
        raise
    level = args.log_level or ("info" if args.command in ("serve", "init-db") else "warning")
    setup_logging(logging.getLevelName(level.upper()))
    config: Config | None = None
    try:
        config = load_config(args.config, organizations=_needs_organizations(args))
        code = COMMANDS[args.command](args, config)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EX_OK
    except ConfigError as exc:
        # check-config is where an admin fixes the config: one line per mistake. The other
        # commands keep to one line (an MTA shows it in its log or bounce).
        every = getattr(exc, "problems", ()) if args.command == "check-config" else ()
        for problem in every or [str(exc)]:
            _error(f"config error: {problem}")
        # ingest behind an MTA: the mail waits in its queue until the config is mended.
        return EX_TEMPFAIL if args.command == "ingest" else EX_USAGE
    except StoreUnavailable as exc:
        # Name the database: behind an MTA this line is all an admin sees of the failure.
        where = _database_name(config.database.url) if config is not None else "?"
        _error(f"{exc} (database {where}; try again later)")
        return EX_TEMPFAIL
    except CliError as exc:
        _error(str(exc))
        return exc.code
    except (NotFound, Refused) as exc:
        _error(str(exc))
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user; the log keeps it
        log.debug("internal error", exc_info=True)
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return EX_SOFTWARE


def _needs_organizations(args: argparse.Namespace) -> bool:
    """Whether the command reads the config's organizations (to route, render or check);
    the others read the database alone and take the config without them (cheap)."""
    reads_db_only = {
        "tickets": lambda: True,
        "outbox": lambda: True,
        "stats": lambda: True,
        "secrets": lambda: True,
        "follow": lambda: args.follow_command == "list",
        "quarantine": lambda: args.quarantine_command != "reprocess",
    }
    only = reads_db_only.get(args.command)
    return not (only is not None and only())


def _database_name(url: str) -> str:
    """The database URL as an admin may read it in a log: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL fails earlier, in the config check
        return "?"


def _silence_stdout() -> None:
    """The reader of our stdout went away (``| head``): stop writing, as Unix tools do.

    What is still buffered would fail again at the interpreter's final flush and print
    "Exception ignored ... BrokenPipeError"; pointing stdout at /dev/null discards it. A
    reader that stops early is not an error, so the command exits 0.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (an in-process caller's buffer): nothing to flush later
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _error(message: str) -> None:
    print(f"mailgate: error: {message}", file=sys.stderr)


def _open_store(config: Config, create: bool = True) -> Any:
    """The store, migrated and synced with the config (every command that uses the DB).

    Only the commands that bring mail in or set the database up (``serve``, ``ingest``,
    ``init-db``) ``create`` a SQLite file that is not there; the others say it is missing
    rather than show an empty database that a typo in the path made. A directory that does
    not exist is an error for every command (:class:`~mailgate.store.Store`).
    """
    from mailgate.store import Store, sqlite_file

    path = sqlite_file(config.database.url)
    if not create and path is not None and path.parent.is_dir() and not path.exists():
        raise CliError(
            f"database file {path} does not exist: nothing is stored yet, or [database].url "
            "names the wrong file (`mailgate init-db` creates it)"
        )
    store = Store(config.database.url, config.database.lock_timeout)
    store.migrate()
    if config.partial and config.file_digest and not store.in_sync(config.file_digest):
        store.sync(load_config(config.source), now())  # the file changed: all of it, once
    else:
        store.sync(config, now())
    return store


# --- commands -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from mailgate.app import serve_until_signalled

    store = _open_store(config)
    try:
        asyncio.run(serve_until_signalled(config, store, lambda: load_config(args.config)))
    except OSError as exc:
        raise CliError(
            f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}"
        ) from None
    finally:
        store.close()
    return EX_OK


def cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    """Store one mail for an MTA's pipe, where the exit status is the whole answer.

    Postfix's pipe(8) bounces on most statuses, so only two are final: 0 (stored, or a
    duplicate) and 65 (the input is not a mail; it is kept in quarantine). A command line
    that cannot be right exits 2 (as does an invalid config). Everything else, from an
    unreadable input to a database that cannot be written or a bug, exits 75 (EX_TEMPFAIL):
    the MTA keeps the mail and retries, and nothing is bounced by accident.
    """
    for rcpt in args.rcpt:
        if "@" not in rcpt:
            raise CliError(
                f"--rcpt {rcpt!r} is not an address; give FILE before --rcpt or after --",
                EX_TEMPFAIL,  # the MTA keeps the mail until its command line is mended
            )
    if args.rcpt and all(_not_ours(rcpt, config) for rcpt in args.rcpt):
        # What the listener answers "550 5.1.1" for: an agent's mailbox in our domain.
        raise CliError(
            f"{', '.join(args.rcpt)}: not a mailbox of ours ([mail] recipients); "
            "its mail belongs to its own mailbox",
            EX_NOUSER,
        )
    try:
        return _ingest(args, config)
    except (CliError, ConfigError, StoreUnavailable):
        raise
    except Exception as exc:
        log.debug("ingest failed", exc_info=True)
        detail = " ".join(str(exc).split())  # one line: an MTA logs only the first
        raise CliError(f"{type(exc).__name__}: {detail} (try again later)", EX_TEMPFAIL) from None


def _not_ours(rcpt: str, config: Config) -> bool:
    """An address of our domains that ``[mail] recipients`` leaves out. Other domains are
    the MTA's business (aliases, rewriting): their mail is taken as before."""
    domain = rcpt.rpartition("@")[2].lower().rstrip(".")
    return domain in config.mail.domains and not config.mail.receives(rcpt)


def _ingest(args: argparse.Namespace, config: Config) -> int:
    from mailgate.ingest import UNPARSEABLE, InboundEnvelope, ingest

    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", EX_TEMPFAIL) from None
    store = _open_store(config)
    try:
        result = ingest(
            store, config, raw, InboundEnvelope(args.mail_from, tuple(args.rcpt)), now()
        )
    finally:
        store.close()
    print(json.dumps(result.as_json(), ensure_ascii=False))
    if result.action == "quarantined" and result.reason.startswith(UNPARSEABLE):
        return EX_DATAERR
    return EX_OK


def cmd_tickets(args: argparse.Namespace, config: Config) -> int:
    store = _open_store(config, create=False)
    try:
        if args.tickets_command == "list":
            _list(store, args, "tickets list")
            return EX_OK
        if args.tickets_command == "show":
            # Core alone and a read-only transaction: the command agents run most.
            from mailgate.db.detail import ticket_detail_of

            with store.reading() as conn:
                detail = ticket_detail_of(conn, args.id)
            print_detail(detail, args.json)
            return EX_OK
        from mailgate.db import queries as st

        with store.transaction() as session:
            if args.tickets_command == "attachment":
                ticket = st.get_ticket(session, args.id)
                _, attachment = st.find_attachment(ticket, args.which)
                _save(st.attachment_data(session, attachment), args.output, attachment.filename)
            else:
                given = (args.status, args.org, args.requester, args.assignee)
                if all(value is None for value in given):
                    raise CliError(
                        "nothing to change: give --status, --org, --requester or --assignee", 2
                    )
                from mailgate.db.moves import set_ticket

                ticket = st.get_ticket(session, args.id)
                changes = {"status": args.status, "organization": args.org}
                set_ticket(
                    session,
                    config,
                    ticket,
                    now(),
                    assignee=args.assignee,
                    requester=args.requester,
                    **changes,
                )
                summary = st.ticket_summary(session, ticket)
                if args.json:
                    print(json.dumps(summary, ensure_ascii=False, indent=2))
                else:
                    print(
                        f"ticket #{summary['id']}: status {summary['status']}, organization "
                        f"{summary['organization'] or '-'}, requester {summary['requester']}, "
                        f"assignee {summary['assignee'] or '-'}"
                    )
    finally:
        store.close()
    return EX_OK


def cmd_route(args: argparse.Namespace, config: Config) -> int:
    """A dry run of routing: pure on the config, so it opens no database and writes nothing."""
    from mailgate.routing import Router

    if "@" not in args.sender:
        raise CliError(f"--from {args.sender!r} is not an email address", EX_USAGE)
    decision = Router(config).route(args.sender, args.subject, args.to)
    if args.json:
        print(json.dumps(decision.as_json(), ensure_ascii=False, indent=2))
        return EX_OK
    print(f"organization: {decision.organization or '-'}")
    print(f"reason:       {decision.reason}")
    if decision.score is not None:
        print(f"score:        {decision.score:.1f}")
    print(f"subject:      {decision.subject}")
    if decision.priority or decision.tags:
        print(f"priority:     {decision.priority or 'normal'}; tags: {', '.join(decision.tags)}")
    if decision.emergency:
        print("emergency:    yes (a keyword of [support] emergency_keywords in the subject)")
    for name, score in decision.candidates:
        print(f"  candidate   {score:5.1f}  {name}")
    return EX_OK


def cmd_outbox(args: argparse.Namespace, config: Config) -> int:
    store = _open_store(config, create=False)
    try:
        _list(store, args, "outbox list")
    finally:
        store.close()
    return EX_OK


def _list(store: Any, args: argparse.Namespace, command: str) -> None:
    """``tickets list``, ``outbox list``, ``quarantine list``: streamed from a read-only
    transaction, which holds up no writer (see :mod:`mailgate.listing`)."""
    from mailgate import views
    from mailgate.db import lists
    from mailgate.listing import filters_of, page_of, show

    filters, page = filters_of(args), page_of(args)
    with store.reading() as conn:
        if command == "tickets list":
            org = lists.organization_id(conn, filters.organization)
            listing = lists.ticket_listing(store.dialect, filters, org)
            show(conn, listing, page, args, views.print_tickets, "no tickets")
        elif command == "outbox list":
            listing = lists.outbox_listing(store.dialect, filters)
            show(conn, listing, page, args, views.print_outbox, "outbox is empty")
        else:
            listing = lists.quarantine_listing(store.dialect, filters)
            show(conn, listing, page, args, views.print_quarantine, "quarantine is empty")


def cmd_follow(args: argparse.Namespace, config: Config) -> int:
    from mailgate.db.queries import find_organization
    from mailgate.db.records import ensure_user
    from mailgate.listing import show_followers
    from mailgate.models import Follower, Membership

    store = _open_store(config, create=False)
    try:
        if args.follow_command == "list":
            with store.reading() as conn:
                show_followers(conn, args)
            return EX_OK
        with store.transaction() as session:
            org = find_organization(session, args.org)
            email = args.email.lower()
            user = ensure_user(session, email, "", now())
            if args.follow_command == "add":
                if session.get(Membership, (user.id, org.id)) is None:
                    raise CliError(
                        f"{email} is not a member of {org.name}; only members may follow it "
                        "(followers see every new ticket)"
                    )
                if session.get(Follower, (user.id, org.id)) is None:
                    session.add(Follower(user_id=user.id, organization_id=org.id, source="cli"))
                print(f"{email} now follows {org.name}")
            else:
                row = session.get(Follower, (user.id, org.id))
                if row is None:
                    raise CliError(f"{email} does not follow {org.name}")
                if row.source == "config":
                    raise CliError(
                        f"{email} follows {org.name} through the config file; remove it there"
                    )
                session.delete(row)
                print(f"{email} no longer follows {org.name}")
    finally:
        store.close()
    return EX_OK


def _when(args: argparse.Namespace) -> datetime:
    """``--now``, or now."""
    if not args.now:
        return now()
    try:
        when = datetime.fromisoformat(args.now)
    except ValueError:
        raise CliError(f"--now {args.now!r} is not an ISO 8601 time", EX_USAGE) from None
    if when.tzinfo is None:
        raise CliError("--now needs an offset, e.g. 2026-11-26T10:00:00+00:00", EX_USAGE)
    return when


def cmd_jobs(args: argparse.Namespace, config: Config) -> int:
    from mailgate.jobs import Jobs

    when = _when(args)
    store = _open_store(config, create=False)
    try:
        result = Jobs(store, config).run_once(when)
    finally:
        store.close()
    # The run ran: rows that failed are in the outbox with their errors, not in the status.
    # stdout keeps its JSON (cron scripts read it); people read the summary on stderr.
    print(json.dumps(result))
    if not args.json:
        summary = f"sent {result['sent']}, retrying {result['retry']}, failed {result['failed']}"
        print(summary, file=sys.stderr)
    return EX_OK


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    from mailgate.db.lists import iso
    from mailgate.db.records import raw_mail
    from mailgate.models import LedgerEntry, Outcome

    store = _open_store(config, create=False)
    try:
        if args.quarantine_command == "reprocess":
            from mailgate.ingest import reprocess_quarantined  # the pipeline: only to reprocess

            if args.all == (args.id is not None):
                raise CliError("give one ID or --all", EX_USAGE)
            results = reprocess_quarantined(store, config, now(), None if args.all else [args.id])
            if args.id is not None and not results:
                raise CliError(f"mail {args.id} is not in quarantine")
            for entry, result in results:
                print(json.dumps({"id": entry, **result.as_json()}, ensure_ascii=False))
            return EX_OK
        if args.quarantine_command == "list":
            _list(store, args, "quarantine list")
            return EX_OK
        with store.transaction() as session:
            row = session.get(LedgerEntry, args.id)
            if row is None or row.outcome != Outcome.QUARANTINED.value:
                raise CliError(f"mail {args.id} is not in quarantine")
            # Purged by [retention]: --raw says so (RawMailPurged); the details show its headers.
            raw = row.raw if row.purged_at is not None and not args.raw else raw_mail(session, row)
            if args.raw:
                sys.stdout.buffer.write(raw)
                return EX_OK
            print(f"mail {row.id}: {row.reason}")
            print(f"  message-id: {row.message_id}")
            print(f"  received:   {iso(row.received_at)} from {row.mail_from or '<>'}")
            print(f"  size:       {row.size} bytes, sha256 {row.sha256}")
            if row.purged_at is not None:
                print(
                    f"  purged:     {iso(row.purged_at)} by [retention]; only its headers are kept"
                )
            if row.error:
                print("  error:")
                print("    " + row.error.strip().replace("\n", "\n    "))
            print()
            print(raw[:4000].decode("utf-8", "replace"))
    finally:
        store.close()
    return EX_OK


def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    from mailgate import retention

    when = _when(args)
    store = _open_store(config, create=False)
    try:
        run = retention.due if args.dry_run else retention.purge
        result = {rule: freed.as_json() for rule, freed in run(store, config, when).items()}
        if args.vacuum and not args.dry_run:
            retention.vacuum(store)
    finally:
        store.close()
    verb = "would free" if args.dry_run else "freed"
    print(json.dumps(result, indent=2) if args.json else retention.describe(result, verb))
    return EX_OK


def cmd_stats(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import func, select

    from mailgate import retention
    from mailgate.models import LedgerEntry, Outbox, Ticket

    store = _open_store(config, create=False)
    try:
        with store.reading() as conn:  # counting holds no write lock: ingest goes on

            def counts(column: Any) -> dict[str, int]:
                rows = conn.execute(select(column, func.count()).group_by(column)).all()
                return {str(key): int(n) for key, n in sorted(rows)}

            ledger = counts(LedgerEntry.outcome)
            result: dict[str, Any] = {
                "ledger": {**ledger, "total": sum(ledger.values())},
                "tickets": counts(Ticket.status),
                "outbox": counts(Outbox.status),
            }
        # What [retention] would free now (mailgate purge): rows and bytes per rule.
        freed = retention.due(store, config, now()).items()
        result["retention"] = {rule: f.as_json() for rule, f in freed}
    finally:
        store.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        freeable = result.pop("retention")
        for section, values in result.items():
            print(f"{section}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        print(retention.describe(freeable, "purge would free"))
    return EX_OK


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    s = config.server
    print(f"config: {config.source} (ok)")
    print(f"listener: {s.protocol} on {s.host}:{s.port}, max message size {s.max_message_size}")
    print(f"database: {config.database.url}")
    print(f"accepting mail for: {', '.join(config.mail.domains)}; from {config.mail.address}")
    limit = config.outbound.max_attachment_size
    print(f"outbound: {config.outbound.transport}; agents' files attached up to {limit} bytes")
    print(f"organizations: {len(config.organizations)}; agents: {len(config.agents.addresses)}")
    support = config.support
    if support.emergency_keywords:
        paged = support.paged(config.agents.notified)
        print(
            f"emergencies: {', '.join(support.emergency_keywords)}; paged outside hours: "
            f"{', '.join(paged) or 'nobody'}"
        )
    warnings = (
        *config.security.warnings(bool(config.agents.addresses)),
        *support.warnings(config.agents.notified),
    )
    for warning in warnings:
        print(f"warning: {warning}")
    return EX_OK


def cmd_init_db(args: argparse.Namespace, config: Config) -> int:
    store = _open_store(config)
    store.close()
    print(f"database ready: {config.database.url}")
    return EX_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "serve": cmd_serve,
    "ingest": cmd_ingest,
    "tickets": cmd_tickets,
    "route": cmd_route,
    "quarantine": cmd_quarantine,
    "stats": cmd_stats,
    "purge": cmd_purge,
    "outbox": cmd_outbox,
    "follow": cmd_follow,
    "jobs": cmd_jobs,
    "check-config": cmd_check_config,
    "init-db": cmd_init_db,
    "secrets": lambda a, c: vault_cli.run(a, c, _open_store(c, create=False), now()),
}


# --- output ---------------------------------------------------------------------------------


def _save(data: bytes, output: str | None, filename: str) -> None:
    """Write an attachment: to ``output`` ('-' is stdout, binary), else under its own name.

    Its own name comes from the sender, so only its last part is used, in the current
    directory, and an existing file is never replaced (``-o`` names one on purpose).
    """
    if output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if output:
        path, mode = Path(output), "wb"
    else:
        name = Path(filename.replace("\\", "/")).name
        path, mode = Path(name if name and not name.startswith(".") else "attachment.bin"), "xb"
    try:
        with path.open(mode) as fh:
            fh.write(data)
    except FileExistsError:
        raise CliError(f"{path} exists; give -o FILE to replace it, or -o - for stdout") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    print(f"saved {path} ({len(data)} bytes)")
