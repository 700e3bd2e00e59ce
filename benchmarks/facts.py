"""Machine and software facts recorded with every run, so numbers can be compared fairly."""

from __future__ import annotations

import os
import platform
import sqlite3
from importlib import metadata
from typing import Any

__all__ = ["machine_facts"]

_PACKAGES = (
    "agent-history",
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "langchain-core",
    "langchain-postgres",
    "psycopg",
    "psycopg-pool",
    "orjson",
    "matplotlib",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """CPU count, platform, Python, SQLite library and package versions."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in _PACKAGES},
    }
