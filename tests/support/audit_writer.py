"""Append audit lines from a child process: ``python -m tests.support.audit_writer PATH N``.

Each line carries a disabled-node list long enough that one line is larger than a pipe
buffer (4 KiB), so interleaving writes would show as broken JSON.
"""

from __future__ import annotations

import sys

from agent_history.audit import record_change

NODES = frozenset(f"node-{i:04d}-{'x' * 20}" for i in range(200))


def main(path: str, count: int) -> None:
    for i in range(count):
        record_change(
            "disabled_nodes", source="flags_file", before=frozenset(), after=NODES,
            audit_file=path, sequence=i,
        )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
