"""Alembic environment: migrates the connection RatingsStore.upgrade hands over (config.attributes)."""

from __future__ import annotations

from alembic import context

from bookrec.ratings.schema import metadata


def run_migrations_online() -> None:
    """Run the migrations on the connection passed in `config.attributes["connection"]`."""
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
