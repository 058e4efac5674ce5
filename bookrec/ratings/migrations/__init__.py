"""Alembic migrations of the ratings store (run by RatingsStore.upgrade, `bookrec db upgrade`)."""
