"""`worker [--concurrency N]`: run export workers until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from .. import context
from ..config import Settings
from ..errors import UsageError
from ..worker import WorkerThreads
from .common import open_engine

log = logging.getLogger(__name__)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run export workers until SIGTERM or SIGINT; an interrupted job goes back to the queue."""
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(message)s")
    # boto3 (object storage) logs each credential lookup at INFO: keep the log to the jobs.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    context.check_stores(settings)
    engine = open_engine(settings)
    threads = WorkerThreads(engine, settings, concurrency=args.concurrency)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        threads.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads.start()
    threads.join()
    engine.dispose()
    return 0


def register(subparsers: Any) -> None:
    """Add `worker [--concurrency N]`."""
    p = subparsers.add_parser("worker", help="run background export workers until stopped")
    p.add_argument(
        "--concurrency", type=int, default=1, help="jobs to run at once in this process (default 1)"
    )
    p.set_defaults(func=cmd_worker)
