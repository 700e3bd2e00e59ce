"""Start-up of the package and of the `agent-history` command, in fresh interpreters."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap

import agent_history

_SRC = str(next(iter(agent_history.__path__)))


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback() -> None:
    # SIGINT is delivered while the command's imports run (the seconds after Enter).
    done = _python(
        """
        import importlib.abc, os, signal, sys

        class Interrupt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "agent_history.history.chat_history":
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["agent-history", "stats"]
        from agent_history.cli import main
        main()
        """
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "error: interrupted\n"
    assert done.stdout == ""


def test_importing_the_package_loads_its_names_when_used() -> None:
    done = _python(
        """
        import sys
        import agent_history
        print("langchain_core" in sys.modules, "agent_history.node" in sys.modules)
        from agent_history import AgentNode, ChatHistory
        print(AgentNode.__module__, ChatHistory.__module__)
        print(sorted(set(agent_history.__all__) - set(dir(agent_history))))
        try:
            agent_history.NoSuchName
        except AttributeError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False False",
        "agent_history.node agent_history.history.chat_history",
        "[]",
        "module 'agent_history' has no attribute 'NoSuchName'",
    ]


def test_every_public_name_is_the_object_of_its_module() -> None:
    for name in agent_history.__all__:
        value = getattr(agent_history, name)
        module = agent_history._MODULE_OF[name]
        assert value is getattr(importlib.import_module(module), name), name
    assert set(agent_history._MODULE_OF) == set(agent_history.__all__)


def test_every_module_imports_on_its_own() -> None:
    # An import cycle can hide behind the order in which some other module happens to
    # load the package; each module is imported first here, its dependencies cached.
    names = sorted(
        info.name
        for info in pkgutil.walk_packages([_SRC], prefix="agent_history.")
        if not info.name.endswith("__main__")
    )
    assert "agent_history.keys" in names and "agent_history.cli.app" in names
    done = _python(
        f"""
        import importlib, sys
        import jinja2, langchain_core.messages, langgraph.graph, psycopg, typer
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m.startswith("agent_history")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{{name}}: {{exc!r}}")
        print("\\n".join(failed))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
