"""Peak memory of storing one large mail, against the same process storing a small one.

A customer's scan or log bundle arrives as one big attachment. Target: a 25 MB message is
processed with a peak RSS below 4x the message size over the idle process. Both runs are
``mailgate ingest`` (the pipe entry point: parse, store the raw mail, the attachment blob,
the ticket) in a fresh process on a fresh SQLite database; the small mail's peak is the
idle process (interpreter, libraries, database connection). The peak is the child's
``ru_maxrss``.

``--serve`` measures the daemon as well: ``mailgate serve`` (SMTP process, parser, writer)
takes a small mail, then the large one over SMTP; printed is each process's peak (VmHWM)
over what it held after the small mail. The SMTP process holds the mail as it came in
(its pieces, then the joined message) and what the parser sends back; the parser and the
writer each hold the mail and what was parsed from it.

Run: ``python bench/memory.py [--size-mb 25] [--serve]``
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import resource
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtp_load import proc_hwm_kb, process_tree, stop, wait_for_port  # noqa: E402  (shared)

MAILGATE = str(Path(sys.executable).with_name("mailgate"))


def message(attachment_bytes: int) -> bytes:
    """A mail whose base64 attachment makes it about ``attachment_bytes * 4/3`` long."""
    data = os.urandom(attachment_bytes)
    encoded = base64.encodebytes(data)  # 76-character lines
    head = (
        b"From: Anna <anna@kunde.example>\r\nTo: support@support.example.com\r\n"
        b"Subject: Kunde: Logdateien\r\nMessage-ID: <big-%d@kunde.example>\r\n"
        b"Date: Thu, 26 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b'--b1\r\nContent-Type: text/plain; charset="utf-8"\r\n\r\nAnbei die Logs.\r\n'
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="logs.tar.gz"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    ) % attachment_bytes
    return head + encoded.replace(b"\n", b"\r\n") + b"--b1--\r\n"


def peak_rss_mb(config: Path, raw: bytes) -> float:
    """Peak RSS of one ``mailgate ingest`` child (Linux reports ru_maxrss in kB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [MAILGATE, "--config", str(config), "ingest"],
        input=raw,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ingest failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("a previous child had a higher peak; run the large mail first")
    return after / 1024


def _send(port: int, raw: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        client.ehlo()
        client.mail("anna@kunde.example")
        client.rcpt("support@support.example.com")
        code, _ = client.data(raw)
    return code


def serve_peaks(workdir: Path, big: bytes, small: bytes) -> None:
    """Each ``serve`` process's peak RSS while the large mail passes, over its state before."""
    config = workdir / "serve.toml"
    config.write_text(
        f"[server]\nport = 0\nmax_message_size = {len(big) * 2}\n"
        f'[database]\nurl = "sqlite:///{workdir / "serve"}.db"\n'
        '[mail]\ndomains = ["support.example.com"]\n'
        'address = "support@support.example.com"\n'
        f'[outbound]\nmaildir = "{workdir / "outbox"}"\n',
        encoding="utf-8",
    )
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [MAILGATE, "--config", str(config), "serve"], stdout=out, stderr=out
        )
    try:
        port = wait_for_port(proc, log, r"listening on [\d.]+:(\d+)", 60)
        roles = {proc.pid: "smtp"}
        for role, index, pid in re.findall(
            r"ingest (worker|parser) (\d+) is pid (\d+)", log.read_text()
        ):
            roles[int(pid)] = f"{role}-{index}"
        assert _send(port, small) == 250
        pids = process_tree(proc.pid)
        before = {pid: proc_hwm_kb(pid) for pid in pids}
        assert _send(port, big) == 250
        size_mb = len(big) / 1024 / 1024
        print(f"serve, the same {size_mb:.1f} MB mail over SMTP:")
        total = 0.0
        for pid in pids:
            over = (proc_hwm_kb(pid) - before[pid]) / 1024
            total += over
            print(
                f"  {roles.get(pid, 'other'):<10} peak {proc_hwm_kb(pid) / 1024:5.0f} MB, "
                f"{over:5.0f} MB over its peak before = {over / size_mb:.1f}x the message"
            )
        print(f"  all processes together: {total:.0f} MB = {total / size_mb:.1f}x the message")
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=25.0, help="size of the whole message")
    parser.add_argument("--serve", action="store_true", help="also measure mailgate serve")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mailgate-memory-"))
    big = message(int(args.size_mb * 1024 * 1024 * 3 / 4))
    small = message(2_000)
    peaks = {}
    # The large mail first: ru_maxrss of children is the maximum over all waited children.
    for name, raw in (("large", big), ("small", small)):
        config = workdir / f"{name}.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{workdir / name}.db"\n'
            '[mail]\ndomains = ["support.example.com"]\n'
            'address = "support@support.example.com"\n'
            f'[outbound]\nmaildir = "{workdir / "outbox"}"\n',
            encoding="utf-8",
        )
        if name == "large":
            peaks[name] = peak_rss_mb(config, raw)
        else:
            # A fresh interpreter measures the small mail on its own.
            code = (
                "import resource, subprocess, sys; "
                f"subprocess.run([{MAILGATE!r}, '--config', {str(config)!r}, 'ingest'], "
                "input=sys.stdin.buffer.read(), capture_output=True, check=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], input=raw, capture_output=True, check=True
            )
            peaks[name] = int(out.stdout) / 1024
    size_mb = len(big) / 1024 / 1024
    over = peaks["large"] - peaks["small"]
    print(f"message {size_mb:.1f} MB (attachment {len(big) * 3 / 4 / 1024 / 1024:.1f} MB)")
    print(f"peak RSS, small mail (idle process): {peaks['small']:.0f} MB")
    print(f"peak RSS, large mail:                {peaks['large']:.0f} MB")
    verdict = "met" if over < 4 * size_mb else "MISSED"
    print(
        f"over the idle process: {over:.0f} MB = {over / size_mb:.1f}x the message size "
        f"(target < 4x): {verdict}"
    )
    if args.serve:
        serve_peaks(workdir, big, small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
