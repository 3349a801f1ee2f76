"""Alembic migrations: one set for SQLite and PostgreSQL (run through
``lrprobe.service.migrate``)."""
