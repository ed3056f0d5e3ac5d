"""`python -m audit_core ...` (or `audit-portal ...`): every command, acting as cli:<os user>.

Each command module registers its subcommands; `main` parses, builds the settings once,
runs the command and answers any `AuditError` once: one line on stderr, its exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config import Settings
from ..errors import AuditError
from . import access, commands, evidence, worker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m audit_core",
        description="`python -m audit_core ...`: operators' and scripts' commands, "
        "acting as cli:<os user>.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    worker.register(sub)
    access.register(sub)
    evidence.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (2 for any refusal, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # `deliver --to` names the destination in place of AUDIT_DELIVERY_TO.
        settings = Settings.from_env(delivery_to=getattr(args, "delivery_to", None))
        return int(args.func(args, settings) or 0)
    except AuditError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
