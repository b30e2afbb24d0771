"""``mailgate ingest`` as an MTA's pipe calls it: several recipients, and exit codes that
never make the MTA bounce a mail that could still be stored.

In-process through ``run_cli``; the subprocess contract of ``ingest`` lives in test_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.config import Config

from .conftest import mail, run_cli

RCPTS = ["support@support.example.com", "help@support.example.com"]


def tickets(config_path: Path) -> list[dict[str, object]]:
    listed = run_cli(config_path, "tickets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert isinstance(rows, list)
    return rows


@pytest.mark.parametrize(
    "rcpt_args",
    [
        ["--rcpt", *RCPTS],  # what Postfix makes of `--rcpt ${recipient}`
        ["--rcpt", RCPTS[0], "--rcpt", RCPTS[1]],
        [f"--rcpt={RCPTS[0]}", f"--rcpt={RCPTS[1]}"],  # `--rcpt=${recipient}`
    ],
)
def test_several_recipients_make_one_ticket(config_path: Path, rcpt_args: list[str]) -> None:
    proc = run_cli(
        config_path, "ingest", "--mail-from", "anna@mueller-logistik.de", *rcpt_args, stdin=mail()
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["action"] == "created"
    assert len(tickets(config_path)) == 1


@pytest.mark.parametrize("where", ["before", "after --", "dash after --"])
def test_a_file_is_still_read_beside_several_recipients(
    config_path: Path, tmp_path: Path, where: str
) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(mail(subject="Aus Datei"))
    if where == "before":
        args = [str(path), "--rcpt", *RCPTS]
        stdin = b""
    elif where == "after --":
        args = ["--rcpt", *RCPTS, "--", str(path)]
        stdin = b""
    else:
        args = ["--rcpt", *RCPTS, "--", "-"]
        stdin = path.read_bytes()
    proc = run_cli(config_path, "ingest", *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert [t["subject"] for t in tickets(config_path)] == ["Aus Datei"]


def test_a_file_among_the_recipients_defers_the_mail(config_path: Path, tmp_path: Path) -> None:
    """The old order ``--rcpt a FILE`` would now read FILE as a recipient and stdin as the
    mail: refused with the fix named, before anything is read or stored."""
    assert run_cli(config_path, "init-db").returncode == 0  # so that `tickets list` can look
    path = tmp_path / "m.eml"
    path.write_bytes(mail())
    proc = run_cli(config_path, "ingest", "--rcpt", RCPTS[0], str(path), stdin=mail())
    assert proc.returncode == 75
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        f"mailgate: error: --rcpt '{path}' is not an address; give FILE before --rcpt or after --\n"
    )
    assert tickets(config_path) == []


def test_a_bad_command_line_defers_the_mail(config_path: Path) -> None:
    """A mistake in the MTA's command line is the admin's to mend; the MTA keeps the mail."""
    proc = run_cli(config_path, "ingest", "--rcpt", stdin=mail())
    assert proc.returncode == 75
    assert b"--rcpt: expected at least one argument" in proc.stderr


def test_an_unreadable_file_exits_75(config_path: Path, tmp_path: Path) -> None:
    proc = run_cli(config_path, "ingest", str(tmp_path / "nope.eml"))
    assert proc.returncode == 75
    assert proc.stderr.decode() == (
        f"mailgate: error: cannot read {tmp_path / 'nope.eml'}: No such file or directory\n"
    )


def test_a_broken_database_exits_75_not_a_bounce(
    make_config: Callable[..., tuple[Config, Path]], db_url: str
) -> None:
    """A failure mailgate did not foresee (here a SQLite file that is not a database) used to
    exit 70, which Postfix's pipe(8) bounces. It is not the mail's fault: 75, the MTA keeps
    the mail and retries once the admin has fixed the database."""
    if not db_url.startswith("sqlite"):
        pytest.skip("a corrupt file is a SQLite matter")
    _, path = make_config()
    Path(db_url.removeprefix("sqlite:///")).write_bytes(b"not a database\n" * 512)
    proc = run_cli(path, "ingest", stdin=mail())
    assert proc.returncode == 75, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr.decode().startswith("mailgate: error: ")
    assert b"try again later" in proc.stderr and b"Traceback" not in proc.stderr
