"""What every command shares: who the operator is, and the migrated engine."""

from __future__ import annotations

import getpass

from sqlalchemy import Engine

from .. import context, evidence
from ..access import Principal
from ..config import Settings
from ..db import make_engine, migrate


def actor() -> str:
    """The operator as recorded in the log: cli:<os user>."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli:unknown"


def cli_principal() -> Principal:
    """Operators act with full rights."""
    return Principal(actor(), "admin", None, "local")


def open_engine(settings: Settings) -> Engine:
    """The migrated engine, with the log's signer attached (appends sign the new head)."""
    context.check_export_dir(settings)
    signer = evidence.load_signer(settings)
    with context.database_errors(settings):
        engine = make_engine(settings.database_url)
        evidence.attach(engine, signer)
        migrate(engine)
    return engine
