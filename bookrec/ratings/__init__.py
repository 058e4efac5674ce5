"""The durable ratings store: SQLAlchemy 2 Core tables, the RatingsStore API and its Alembic migrations.

One schema for SQLite (the embedded default, WAL mode) and PostgreSQL (psycopg 3). Imports only bookrec.shared.
"""
