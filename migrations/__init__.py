"""Alembic migrations: one set for SQLite and PostgreSQL (run through ``service.migrate``)."""
