"""HistorySettings: defaults, environment parsing and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_history import ConfigError, HistorySettings
from agent_history.settings import Backend

SENTINEL = "S3ntinel-Pa55word"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("ORCHEO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults_use_sqlite_in_the_xdg_data_dir(tmp_path: Path) -> None:
    settings = HistorySettings()
    assert settings.graph_store_backend is Backend.SQLITE
    assert (
        settings.graph_store_sqlite_path
        == tmp_path / "xdg" / "agent-history" / "graph_store.sqlite"
    )
    assert settings.graph_store_sqlite_path.is_absolute()
    assert settings.effective_checkpoint_backend is Backend.SQLITE


def test_backend_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHEO_GRAPH_STORE_BACKEND", "MeMoRy")
    assert HistorySettings().graph_store_backend is Backend.MEMORY


def test_checkpoint_backend_follows_graph_store_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHEO_GRAPH_STORE_BACKEND", "memory")
    assert HistorySettings().effective_checkpoint_backend is Backend.MEMORY
    monkeypatch.setenv("ORCHEO_CHECKPOINT_BACKEND", "sqlite")
    assert HistorySettings().effective_checkpoint_backend is Backend.SQLITE


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        (
            {"ORCHEO_GRAPH_STORE_BACKEND": "redis"},
            "ORCHEO_GRAPH_STORE_BACKEND",
            "memory, sqlite, postgres",
        ),
        ({"ORCHEO_CHECKPOINT_BACKEND": "mongo"}, "ORCHEO_CHECKPOINT_BACKEND", "must be one of"),
        (
            {"ORCHEO_GRAPH_STORE_SQLITE_PATH": "data/store.sqlite"},
            "ORCHEO_GRAPH_STORE_SQLITE_PATH",
            "absolute",
        ),
        (
            {"ORCHEO_GRAPH_STORE_SQLITE_PATH": "~/store.sqlite"},
            "ORCHEO_GRAPH_STORE_SQLITE_PATH",
            "'~' is not expanded",
        ),
        (
            {"ORCHEO_CHECKPOINT_SQLITE_PATH": "./cp.sqlite"},
            "ORCHEO_CHECKPOINT_SQLITE_PATH",
            "absolute",
        ),
        ({"ORCHEO_GRAPH_STORE_BACKEND": "postgres"}, "ORCHEO_POSTGRES_DSN", "required"),
        ({"ORCHEO_CHECKPOINT_BACKEND": "postgres"}, "ORCHEO_POSTGRES_DSN", "required"),
        ({"ORCHEO_POSTGRES_POOL_MIN_SIZE": "0"}, "ORCHEO_POSTGRES_POOL_MIN_SIZE", "at least 1"),
        (
            {"ORCHEO_POSTGRES_POOL_MIN_SIZE": "8", "ORCHEO_POSTGRES_POOL_MAX_SIZE": "4"},
            "ORCHEO_POSTGRES_POOL_MAX_SIZE",
            ">=",
        ),
        ({"ORCHEO_POSTGRES_POOL_MAX_SIZE": "many"}, "ORCHEO_POSTGRES_POOL_MAX_SIZE", "integer"),
        ({"ORCHEO_POSTGRES_POOL_TIMEOUT": "-1"}, "ORCHEO_POSTGRES_POOL_TIMEOUT", "positive"),
        ({"ORCHEO_POSTGRES_POOL_MAX_IDLE": "0"}, "ORCHEO_POSTGRES_POOL_MAX_IDLE", "positive"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, fragment: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        HistorySettings()
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ":")
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_errors_raised_from_code_also_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^ORCHEO_GRAPH_STORE_SQLITE_PATH: "):
        HistorySettings(graph_store_sqlite_path="relative.sqlite")


def test_dsn_password_never_in_repr_describe_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = f"postgresql://app:{SENTINEL}@db.internal:6543/chat"
    monkeypatch.setenv("ORCHEO_GRAPH_STORE_BACKEND", "postgres")
    monkeypatch.setenv("ORCHEO_POSTGRES_DSN", dsn)
    settings = HistorySettings()
    assert SENTINEL not in repr(settings)
    assert SENTINEL not in str(settings.describe())
    assert settings.describe()["postgres"] == "db.internal:6543/chat"
    assert settings.dsn == dsn
    monkeypatch.setenv("ORCHEO_POSTGRES_POOL_MAX_SIZE", "nope")
    with pytest.raises(ConfigError) as caught:
        HistorySettings()
    assert SENTINEL not in str(caught.value)


def test_key_value_dsn_is_redacted() -> None:
    from agent_history.dsn import redact_dsn

    redacted = redact_dsn(f"host=h port=1 dbname=d user=u password={SENTINEL}")
    assert SENTINEL not in redacted
    assert "password=***" in redacted


def test_unknown_keyword_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        HistorySettings(graph_store_backnd="postgres")  # type: ignore[call-arg]
    assert caught.value.variable == "graph_store_backnd"
    assert "did you mean 'graph_store_backend'?" in str(caught.value)


def test_unrelated_orcheo_variables_are_still_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHEO_GRAPH_CHAT_HISTORY_MODE", "off")
    monkeypatch.setenv("ORCHEO_SOMETHING_ELSE", "x")
    monkeypatch.setenv("ORCHEO_GRAPH_STORE_BACKND", "postgres")
    assert HistorySettings().graph_store_backend is Backend.SQLITE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORCHEO_POSTGRES_POOL_TIMEOUT", "nan"),
        ("ORCHEO_POSTGRES_POOL_MAX_IDLE", "inf"),
        ("ORCHEO_GRAPH_STORE_SQLITE_BUSY_TIMEOUT", "NaN"),
    ],
)
def test_nan_and_infinite_numbers_are_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        HistorySettings()
    assert caught.value.variable == name
    with pytest.raises(ConfigError):
        HistorySettings(postgres_pool_timeout=float("inf"))


def test_the_typed_signature_lists_every_field() -> None:
    """The keyword signature type checkers see is declared apart from the fields: keep
    them in step."""
    import ast
    import inspect
    import textwrap

    from agent_history import settings as module

    tree = ast.parse(textwrap.dedent(inspect.getsource(module.HistorySettings)))
    declared = [
        arg.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for inner in node.body
        if isinstance(inner, ast.FunctionDef) and inner.name == "__init__"
        for arg in inner.args.kwonlyargs
    ]
    assert declared == list(HistorySettings.model_fields)


def test_mypy_catches_a_misspelt_setting(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    code = tmp_path / "typo.py"
    code.write_text(
        "from agent_history import HistorySettings\n"
        'HistorySettings(graph_store_backend="postgres", graph_store_sqlite_path="/x.db")\n'
        'HistorySettings(graph_store_backnd="postgres")\n'
    )
    stdout, _, status = mypy_api.run(["--strict", "--no-error-summary", str(code)])
    assert status == 1
    assert stdout.count("error:") == 1
    assert 'typo.py:3: error: Unexpected keyword argument "graph_store_backnd"' in stdout


def test_the_earlier_sqlite_path_variable_still_sets_the_checkpointer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ORCHEO_SQLITE_PATH", str(tmp_path / "old.sqlite"))
    with caplog.at_level("WARNING", logger="agent_history"):
        settings = HistorySettings()
    assert settings.checkpoint_sqlite_path == tmp_path / "old.sqlite"
    assert "deprecated_variable variable=ORCHEO_SQLITE_PATH" in caplog.text
    assert "ORCHEO_CHECKPOINT_SQLITE_PATH" in caplog.text


def test_the_new_checkpointer_variable_and_arguments_win_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ORCHEO_SQLITE_PATH", str(tmp_path / "old.sqlite"))
    monkeypatch.setenv("ORCHEO_CHECKPOINT_SQLITE_PATH", str(tmp_path / "new.sqlite"))
    with caplog.at_level("WARNING", logger="agent_history"):
        assert HistorySettings().checkpoint_sqlite_path == tmp_path / "new.sqlite"
        monkeypatch.delenv("ORCHEO_CHECKPOINT_SQLITE_PATH")
        given = HistorySettings(checkpoint_sqlite_path=tmp_path / "given.sqlite")
        assert given.checkpoint_sqlite_path == tmp_path / "given.sqlite"
    assert "deprecated_variable" not in caplog.text


def test_a_relative_earlier_sqlite_path_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHEO_SQLITE_PATH", "relative/old.sqlite")
    with pytest.raises(ConfigError, match=r"^ORCHEO_SQLITE_PATH: must be an absolute path"):
        HistorySettings()
