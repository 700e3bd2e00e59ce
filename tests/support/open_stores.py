"""Open the graph store and the checkpointer from settings, then exit.

Usage: ``python -m tests.support.open_stores DSN``. Prints ``opened`` once both are set
up. Used to start several workers on a brand-new PostgreSQL database at once.
"""

from __future__ import annotations

import sys

from agent_history.settings import HistorySettings
from agent_history.stores import create_checkpointer_sync, create_graph_store_sync


def main(dsn: str) -> None:
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
    with create_graph_store_sync(settings), create_checkpointer_sync(settings):
        print("opened", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
