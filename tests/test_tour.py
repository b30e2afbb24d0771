"""The README's five-minute tour, run as it stands there: every command shows what it promises.

A newcomer copies these commands; if one of them fails or shows nothing, the first thing
they see of mailgate is a broken promise. The commands are read from the README itself,
with only the venv's paths and the port (2525 may be taken on a test machine) replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

MAILGATE = f"{sys.executable} -m mailgate"


def tour_blocks() -> list[str]:
    """The ``sh`` code blocks of the README's "Five-minute tour" section, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _local(command: str, port: int) -> str:
    """The command for this machine: the test's interpreter for the venv's, a free port."""
    command = command.replace(".venv/bin/python", sys.executable)
    command = command.replace(".venv/bin/mailgate", MAILGATE)
    return command.replace("2525", str(port))


def _wait_for_port(port: int, server: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet; nothing is ordered by it
    raise AssertionError(f"serve did not listen on {port} within {seconds} s")


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory holding what a clone holds that the tour uses."""
    shutil.copy(ROOT / "config.example.toml", tmp_path / "config.example.toml")
    yield tmp_path


def test_the_tour_shows_what_it_promises(workdir: Path) -> None:
    """Copy the example config, serve, send the mail, and read every command's output."""
    blocks = tour_blocks()
    assert len(blocks) >= 3, "the tour: start, send a mail, look at it (then configure)"
    start, send, *looks = blocks
    look = "\n".join(looks)
    port = _free_port()
    env = {**os.environ, "MAILGATE_CONFIG": ""}
    start_lines = [line for line in start.splitlines() if line.strip()]
    assert start_lines[0] == "cp config.example.toml mailgate.toml"
    assert start_lines[1] == ".venv/bin/mailgate serve"
    subprocess.run(start_lines[0], shell=True, cwd=workdir, check=True)
    config = workdir / "mailgate.toml"
    config.write_text(
        re.sub(r"(?m)^port = 2525$", f"port = {port}", config.read_text(encoding="utf-8")),
        encoding="utf-8",
    )
    log = (workdir / "serve.log").open("wb")
    server = subprocess.Popen(
        _local(start_lines[1], port).split(),
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        _wait_for_port(port, server)
        sent = subprocess.run(
            _local(send, port), shell=True, cwd=workdir, env=env, capture_output=True, text=True
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "accepted"
        outputs: dict[str, str] = {}
        for line in (line for line in look.splitlines() if line.strip()):
            done = subprocess.run(
                _local(line, port),
                shell=True,
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"{line}: {done.stderr}"
            outputs[line] = done.stdout
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert server.returncode == 0, (workdir / "serve.log").read_text(errors="replace")[-2000:]
    prefix = ".venv/bin/mailgate "
    assert "Drucker kaputt" in outputs[prefix + "tickets list"]
    shown = outputs[prefix + "tickets show 1"]
    assert "organization: Müller Logistik GmbH" in shown
    assert "Ticket #1: Drucker kaputt" in shown
    assert '"organization": "Müller Logistik GmbH"' in outputs[prefix + "tickets show 1 --json"]
    route = next(v for k, v in outputs.items() if k.startswith(prefix + "route "))
    assert "organization: Müller Logistik GmbH" in route
    assert "member of its agency" in route
    listed = outputs[prefix + "outbox list"]
    assert re.search(r"sent\s+ticket_created\s+#1\s.*anna@mueller-logistik\.de", listed), listed
    assert outputs["ls outbox/new/"].split(), "the acknowledgement is in the Maildir"
    assigned = outputs[prefix + "tickets set 1 --assignee tech@support.example.com"]
    assert "assignee tech@support.example.com" in assigned, assigned
    assert outputs[prefix + "tickets list --assignee none"].strip() == "no tickets"
    checked = next(v for k, v in outputs.items() if k.startswith(prefix + "check-config"))
    assert "Müller Logistik GmbH" in checked or "organization" in checked, checked
