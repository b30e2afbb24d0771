"""Log set-up, one for every process of mailgate.

The command line and each pool process of ``serve`` (started by spawn, so nothing is
inherited) call :func:`setup_logging`, so all their lines look alike on one stderr. It
lives apart from :mod:`mailgate.cli` so that the pool can import it without importing
the commands, which import the pool.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int) -> None:
    """Log lines on stderr at ``level``, with the chatter of the libraries turned down."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if level > logging.DEBUG:  # aiosmtpd logs every SMTP command at INFO
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        logging.getLogger("mailparser").setLevel(logging.ERROR)  # "content not handled" noise
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per job run
