"""The benchmark's own PostgreSQL connections (version check, statistics, clean-up,
langchain-postgres, the floor): each gives up after `CONNECT_TIMEOUT_S`."""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["CONNECT_TIMEOUT_S", "connect"]

CONNECT_TIMEOUT_S = 5
"""Longest a benchmark connection waits for the server (the library's default
``ORCHEO_POSTGRES_CONNECT_TIMEOUT``): a server that does not answer fails fast."""


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A psycopg connection that gives up after `CONNECT_TIMEOUT_S`."""
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
