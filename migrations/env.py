"""Alembic environment: run against the connection handed in by audit_core.db.migrate."""

from alembic import context

from audit_core.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:
    from audit_core.config import Settings
    from audit_core.db import make_engine

    engine = make_engine(Settings.from_env().database_url)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
