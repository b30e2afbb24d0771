"""A cheap CLI: an unchanged config is neither parsed whole nor synced again, and a changed
one writes only what changed.

The file's digest is noted in the database at sync; a command that reads the database only
takes the config without its organizations from the cache a full load left
(:mod:`mailgate.confcache`). Real files, real subprocesses, real databases.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from mailgate import confcache
from mailgate.config import Config
from mailgate.confload import load_config
from mailgate.models import Follower, Membership, Organization, User
from mailgate.store import Store, schema_head

from .conftest import BASE_CONFIG, Clock, mail, run_cli, send


def test_a_partial_config_comes_from_the_cache_of_the_same_bytes(config_path: Path) -> None:
    full = load_config(str(config_path))
    assert full.organizations and not full.partial and full.file_digest
    partial = load_config(str(config_path), organizations=False)
    assert partial.partial and partial.organizations == ()
    assert partial.file_digest == full.file_digest
    assert (partial.database, partial.mail, partial.agents) == (
        full.database,
        full.mail,
        full.agents,
    )
    # Another byte in the file: a new digest, nothing cached for it, so all of it is read.
    config_path.write_text(config_path.read_text() + "\n# edited\n")
    again = load_config(str(config_path), organizations=False)
    assert not again.partial and again.organizations == full.organizations


def test_a_cache_file_another_user_could_write_is_ignored(config_path: Path) -> None:
    full = load_config(str(config_path))
    assert full.file_digest is not None
    cached = confcache.directory() / f"config-{full.file_digest}.json"
    assert cached.exists()
    cached.chmod(0o666)
    try:
        assert confcache.load(full.file_digest) is None
        assert not load_config(str(config_path), organizations=False).partial
    finally:
        cached.chmod(0o600)


def test_a_partial_config_is_never_synced(store: Store, config_path: Path, clock: Clock) -> None:
    load_config(str(config_path))  # leaves the cache
    config_path.write_text(config_path.read_text() + "\n# a new digest the database lacks\n")
    load_config(str(config_path))
    partial = load_config(str(config_path), organizations=False)
    assert partial.partial
    with pytest.raises(ValueError, match="never synced"):
        store.sync(partial, clock())


def _orgs(store: Store) -> dict[str, bool]:
    with store.transaction() as session:
        return dict(session.execute(select(Organization.name, Organization.active)).all())


def test_commands_sync_an_edited_file_once_and_then_read_it_from_the_cache(
    config_path: Path, server: int, store: Store
) -> None:
    assert send(server, mail()) == {}
    first = run_cli(config_path, "--log-level", "info", "tickets", "list", "--json")
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)) == 1
    again = run_cli(config_path, "--log-level", "info", "tickets", "show", "1", "--json")
    assert again.returncode == 0 and b"synced" not in again.stderr
    # The admin adds an organization: the next command (a cheap one) syncs it, once.
    config_path.write_text(
        config_path.read_text() + '\n[[organizations]]\nname = "Neu AG"\nmembers = ["neu@neu.de"]\n'
    )
    edited = run_cli(config_path, "--log-level", "info", "tickets", "list")
    assert edited.returncode == 0, edited.stderr
    assert b"synced" in edited.stderr
    assert _orgs(store)["Neu AG"] is True
    quiet = run_cli(config_path, "--log-level", "info", "stats", "--json")
    assert quiet.returncode == 0 and b"synced" not in quiet.stderr


class Writes:
    """The INSERT, UPDATE and DELETE statements a connection runs (rows each)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, int]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE") and "meta" not in statement.split("(")[0]:
            rows = len(parameters) if isinstance(parameters, list) else 1
            self.statements.append((verb, rows))


@pytest.fixture
def writes(store: Store) -> Iterator[Writes]:
    seen = Writes()
    event.listen(store.engine, "before_cursor_execute", seen)
    yield seen
    event.remove(store.engine, "before_cursor_execute", seen)


def test_a_changed_config_writes_only_what_changed(
    store: Store, make_config: Callable[..., tuple[Config, Path]], clock: Clock, writes: Writes
) -> None:
    organizations: list[dict[str, Any]] = copy.deepcopy(BASE_CONFIG["organizations"])
    organizations[0]["members"] = [*organizations[0]["members"], "neu@mueller-logistik.de"]
    changed, _ = make_config({"organizations": organizations}, name="one-more.toml")
    assert store.sync(changed, clock()) is True
    # One new user and one membership: two inserts of one row each; nothing else.
    assert writes.statements == [("INSERT", 1), ("INSERT", 1)]
    with store.transaction() as session:
        neu = session.scalar(select(User.id).where(User.email == "neu@mueller-logistik.de"))
        joined = session.scalars(
            select(Membership.organization_id).where(Membership.user_id == neu)
        )
        assert list(joined) == [
            session.scalar(
                select(Organization.id).where(Organization.name == "Müller Logistik GmbH")
            )
        ]
    writes.statements.clear()
    organizations[0]["members"] = organizations[0]["members"][:-1]
    removed, _ = make_config({"organizations": organizations}, name="one-less.toml")
    assert store.sync(removed, clock()) is True
    assert writes.statements == [("DELETE", 1)]  # the membership; the user stays (history)


def test_a_link_added_by_hand_survives_a_sync(
    store: Store, make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    with store.transaction() as session:
        anna = session.scalar(select(User.id).where(User.email == "anna@mueller-logistik.de"))
        blau = session.scalar(select(Organization.id).where(Organization.name == "Agentur Blau"))
        session.add(Follower(user_id=anna, organization_id=blau, source="cli"))
    organizations: list[dict[str, Any]] = copy.deepcopy(BASE_CONFIG["organizations"])
    organizations.append({"name": "Noch Eine", "members": ["x@noch.de"]})
    changed, _ = make_config({"organizations": organizations}, name="more.toml")
    assert store.sync(changed, clock()) is True
    with store.transaction() as session:
        kept = session.get(Follower, (anna, blau))
        assert kept is not None and kept.source == "cli"


def test_the_schema_head_is_read_from_the_migration_files(store: Store) -> None:
    """The cheap check that skips alembic names the revision alembic itself would."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from mailgate.store import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert schema_head() == ScriptDirectory.from_config(cfg).get_current_head()
    assert store.schema_is_current()


def test_a_cache_directory_the_user_cannot_use_costs_nothing_but_time(
    store: Store, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cache where none can be: a command works all the same (the Postfix tests run the
    pipe as another user, whose cache directory is not the tests' to read)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MAILGATE_CACHE_DIR", str(blocker / "cache"))
    full = load_config(str(config_path))
    assert full.organizations
    assert not load_config(str(config_path), organizations=False).partial
    result = run_cli(config_path, "stats", "--json")
    assert result.returncode == 0, result.stderr
