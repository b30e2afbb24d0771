"""Baseline SMTP servers for ``bench/smtp_load.py``: what aiosmtpd alone costs.

Two servers, each on the same aiosmtpd protocol settings as ``mailgate serve`` (SMTPUTF8,
25 MiB size limit), so the load harness can put mailgate's throughput in proportion:

* ``discard``: the handler answers 250 to every message and keeps nothing. This is the
  ceiling of the SMTP layer (aiosmtpd parsing, Python's event loop, the loopback socket).
* ``fsync``: the handler appends each message to ``PATH`` and ``os.fsync``-s the file
  before answering 250, i.e. the cheapest way to honour RFC 5321's "stored before 250".
  The write runs in a thread (as mailgate's database work does), serialised by a lock.

Run: ``python bench/baselines.py discard|fsync [PATH]``; the server binds 127.0.0.1 on a
free port, prints ``listening on 127.0.0.1:PORT`` on stdout and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

MAX_MESSAGE_SIZE = 26214400  # mailgate's default server.max_message_size


class DiscardHandler:
    """Accept every recipient and every message; store nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: discarded"


class FsyncHandler:
    """Append each message to one file and fsync it before answering 250."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")

    def _store(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        record = b"From bench\n" + raw + b"\n"
        await asyncio.get_running_loop().run_in_executor(self.executor, self._store, record)
        return "250 2.0.0 Ok: stored"


async def main(kind: str, path: str | None) -> None:
    loop = asyncio.get_running_loop()
    handler: Any
    if kind == "discard":
        handler = DiscardHandler()
    else:
        if path is None:
            raise SystemExit("fsync needs a PATH")
        handler = FsyncHandler(path)

    def factory() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=True,
            hostname="localhost",
            ident="baseline",
            timeout=300,
            loop=loop,
        )

    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["discard", "fsync"])
    parser.add_argument("path", nargs="?")
    args = parser.parse_args()
    asyncio.run(main(args.kind, args.path))
