"""``python -m agent_history.cli``: the `agent-history` command."""

from agent_history.cli import main

main()
