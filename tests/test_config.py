"""Config loading: defaults, discovery order, and one clear line for every bad key."""

from __future__ import annotations

import subprocess
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from mailgate.config import SECTIONS, Config, parse_config
from mailgate.confload import load_config
from mailgate.errors import ConfigError

from .conftest import MAILGATE, ROOT, run_cli


def test_defaults_work_on_a_laptop() -> None:
    """Without any file the daemon runs on SQLite, 127.0.0.1:2525 and a local maildir."""
    config = Config()
    assert config.database.url == "sqlite:///mailgate.db"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 2525)
    assert (config.outbound.transport, config.outbound.maildir) == ("maildir", "outbox")
    assert config.tickets.close_after == timedelta(days=3)


def test_example_file_is_valid_and_documents_every_key() -> None:
    """config.example.toml parses, and every key the loader knows appears in it."""
    path = ROOT / "config.example.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    config = parse_config(data)
    assert config.organizations, "the example should show organizations"
    text = path.read_text(encoding="utf-8")
    for section in sorted(SECTIONS - {"organizations"}):  # every section the parser knows
        fields = getattr(Config(), section).__dataclass_fields__
        for key in fields:
            documented = (f"{key.rstrip('_')} =", f"[[{section}.{key}]]")
            assert any(d in text for d in documented), f"[{section}].{key} undocumented"


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config beats $MAILGATE_CONFIG beats ./mailgate.toml beats the defaults."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILGATE_CONFIG", raising=False)
    assert load_config().source == "built-in defaults"
    (tmp_path / "mailgate.toml").write_text("[server]\nport = 2600\n")
    assert load_config().server.port == 2600
    (tmp_path / "env.toml").write_text("[server]\nport = 2700\n")
    monkeypatch.setenv("MAILGATE_CONFIG", str(tmp_path / "env.toml"))
    assert load_config().server.port == 2700
    (tmp_path / "cli.toml").write_text("[server]\nport = 2800\n")
    assert load_config(str(tmp_path / "cli.toml")).server.port == 2800


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\nport = "x"', "[server].port: must be an integer"),
        ("[server]\nport = 70000", "[server].port: must be between 0 and 65535"),
        ('[server]\nprotocol = "http"', "[server].protocol: must be one of 'smtp', 'lmtp'"),
        ("[server]\nprot = 1", "[server].prot: unknown key"),
        ("[nonsense]\na = 1", "[nonsense]: unknown section"),
        ('[database]\nurl = "mysql://x"', "[database].url: must start with sqlite:///"),
        ('[mail]\ndomains = ["not a domain"]', "[mail].domains: item 1 ('not a domain')"),
        ('[mail]\naddress = "support"', "[mail].address: must be an email address"),
        ("[mail]\ndomains = []", "[mail].domains: must name at least one domain"),
        ('[tickets]\nclose_after = "3 days"', "[tickets].close_after: must be a duration"),
        ('[routing]\nthreshold = "high"', "[routing].threshold: must be a number"),
        ('[routing]\ndefault_organization = "Nope"', "'Nope' is not an organization"),
        ('[[organizations]]\naliases = ["x"]', "organizations[1].name: missing"),
        (
            '[[organizations]]\nname = "A"\nmembers = ["x"]',
            "organizations[1].members: item 1 ('x') must be an email address",
        ),
        ('[[organizations]]\nname = "A"\n[[organizations]]\nname = "a"', "defined twice"),
        ('[[organizations]]\nname = "A"\nagencies = ["B"]', "'B' is not an organization"),
        ("[server\nport = 1", "not valid TOML"),
        (
            '[outbound]\nmax_attachment_size = "10 parsecs"',
            "[outbound].max_attachment_size: must be a size like '10MB'",
        ),
        (
            "[outbound]\nmax_attachment_size = -1",
            "[outbound].max_attachment_size: must be between 0 and",
        ),
    ],
)
def test_invalid_file_names_key_and_problem(tmp_path: Path, toml: str, message: str) -> None:
    """Every invalid config gives a ConfigError naming the file, the key and the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    """The CLI prints one line on stderr, no traceback, and exits 2."""
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = -1\n")
    proc = subprocess.run(
        [*MAILGATE, "--config", str(path), "check-config"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mailgate: error: config error: {path}: [server].port: must be between 0 and 65535"
    ]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*MAILGATE, "--config", str(tmp_path / "nope.toml"), "check-config"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "nope.toml: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_followers_must_be_members(tmp_path: Path) -> None:
    """Followers see every new ticket: check-config refuses a follower who is no member."""
    path = tmp_path / "f.toml"
    path.write_text(
        '[[organizations]]\nname = "A"\nmembers = ["a@a.example"]\nfollowers = ["b@b.example"]\n'
    )
    proc = subprocess.run(
        [*MAILGATE, "--config", str(path), "check-config"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "organizations[1].followers: 'b@b.example' is not a member of A" in proc.stderr


def test_check_config_reports_every_mistake_one_line_each(tmp_path: Path) -> None:
    """An admin fixes the whole file in one round: every mistake, one line each, exit 2."""
    path = tmp_path / "many.toml"
    path.write_text(
        "[server]\nport = 70000\nprot = 1\n"
        '[mail]\naddress = "support"\n'
        '[hours]\nopen = "25:00"\n'
        "[nonsense]\na = 1\n"
        '[[organizations]]\naliases = ["x"]\n'
        '[[organizations]]\nname = "A"\nmembers = ["x"]\nagencies = ["B"]\n'
    )
    proc = run_cli(path, "check-config")
    assert proc.returncode == 2
    assert proc.stdout == b""
    prefix = f"mailgate: error: config error: {path}: "
    assert proc.stderr.decode().splitlines() == [
        prefix + line
        for line in (
            "[nonsense]: unknown section",
            "[server].prot: unknown key",
            "[server].port: must be between 0 and 65535",
            "[mail].address: must be an email address like 'name@example.com'",
            "[hours].open: must be a time like '09:00'",  # no echo from the open < close check
            "organizations[1].name: missing",
            "organizations[2].members: item 1 ('x') must be an email address like "
            "'name@example.com'",
            "organizations[2].agencies: 'B' is not an organization",
        )
    ]
    # Other commands, and load_config's callers, get all of them on one line.
    other = run_cli(path, "stats")
    assert other.returncode == 2
    [line] = other.stderr.decode().splitlines()
    assert line.startswith(prefix + "[nonsense]: unknown section; [server].prot: unknown key; ")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == line.removeprefix("mailgate: error: config error: ")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ('"10MB"', 10 * 1024 * 1024),
        ('"10 MB"', 10 * 1024 * 1024),
        ('"512kb"', 512 * 1024),
        ('"2MiB"', 2 * 1024 * 1024),
        ('"1.5GB"', 3 * 1024**3 // 2),
        ("1048576", 1048576),
        ('"4096"', 4096),
        ("0", 0),
    ],
)
def test_max_attachment_size_takes_sizes_with_units(tmp_path: Path, value: str, size: int) -> None:
    path = tmp_path / "size.toml"
    path.write_text(f"[outbound]\nmax_attachment_size = {value}\n")
    assert load_config(str(path)).outbound.max_attachment_size == size
    assert Config().outbound.max_attachment_size == 10 * 1024 * 1024  # the default
