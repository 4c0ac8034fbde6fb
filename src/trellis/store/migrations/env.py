"""Alembic environment: runs on the connection Trellis hands over in ``config.attributes``.

There is no alembic.ini: :func:`trellis.store.db.alembic_config` builds the config in code,
and :meth:`trellis.store.db.Database.migrate` passes a sync connection (from
``AsyncConnection.run_sync``) that already holds the migration lock and transaction.
"""

from __future__ import annotations

from alembic import context

from trellis.store.tables import VERSION_TABLE, include_name, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Trellis migrations run through trellis.store.Database.migrate(), "
        "which provides the database connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
