"""Secrets and message bodies never reach logs, exceptions, reprs, CLI output or metrics."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import psycopg
import pytest
from langgraph.store.base import BaseStore
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from agent_history import METRICS, AgentNode, HistoryReport, enable_prometheus
from agent_history.cli import app
from agent_history.errors import ConfigError, StoreUnavailable
from agent_history.redaction import safe_error_text
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.fault_stores import FaultyStore
from tests.support.postgres_server import PostgresServer

WRONG_PASSWORD = "S3ntinel-Wr0ng-Pa55word"
BODY_SENTINEL = "B0DY-SENTINEL-7f3a"
runner = CliRunner()


# --- where a secret could surface -----------------------------------------------------------


def _record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), str(record.msg), repr(record.args)]
    texts += [repr(value) for value in vars(record).values()]
    if record.exc_info:
        texts.append("".join(traceback.format_exception(*record.exc_info)))
    return texts


def _assert_absent(secret: str, texts: list[str], where: str) -> None:
    leaks = [text for text in texts if secret in text]
    assert not leaks, f"{where} leaks the secret: {leaks[0][:300]!r}"


def _metrics_texts(registry: Any) -> list[str]:
    return [
        json.dumps(METRICS.snapshot()),
        prometheus_client.generate_latest(registry).decode(),
    ]


@pytest.fixture
def prometheus_registry() -> prometheus_client.CollectorRegistry:
    """A fresh Prometheus registry exposing the library's metrics."""
    registry = prometheus_client.CollectorRegistry()
    assert enable_prometheus(registry)
    return registry


@pytest.fixture
def library_logger() -> Iterator[None]:
    """The CLI installs a stderr handler on the library logger: undo it after the test."""
    logger = logging.getLogger("agent_history")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def _cli(args: list[str], dsn: str) -> tuple[int, str]:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": "postgres",
        "ORCHEO_POSTGRES_DSN": dsn,
        "ORCHEO_POSTGRES_CONNECT_TIMEOUT": "3",
    }
    result = runner.invoke(app, args, env=env)
    texts = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        texts += "".join(traceback.format_exception(result.exception))
    return result.exit_code, texts


def _replace_password(dsn: str, password: str) -> str:
    parts = conninfo_to_dict(dsn)
    return (
        f"postgresql://{parts['user']}:{password}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    )


# --- DSN passwords ------------------------------------------------------------------------


@pytest.mark.postgres
def test_working_dsn_password_never_surfaces(
    pg_server: PostgresServer,
    fresh_pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
    prometheus_registry: Any,
    library_logger: None,
    record_figures: Record,
) -> None:
    secret = pg_server.password
    assert secret in fresh_pg_dsn  # the DSN really carries the password checked for
    caplog.set_level(logging.DEBUG)
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    texts = [repr(settings), str(settings), json.dumps(settings.describe())]
    texts += [settings.model_dump_json(), repr(settings.model_dump())]
    with create_graph_store_sync(settings) as store:
        graph = build_graph(
            AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles()), store
        )
        out = graph.invoke(telegram_callback(1, "hello"), new_thread())
        assert out["messages"][-1].content == "echo: hello"
    outputs = []
    for args in (["doctor"], ["doctor", "--json"], ["stats"], ["stats", "--json"]):
        code, output = _cli(args, fresh_pg_dsn)
        assert code == 0, output  # the commands really connected with that password
        outputs.append(output)
    _assert_absent(secret, texts, "settings")
    _assert_absent(secret, outputs, "CLI output")
    _assert_absent(secret, [t for r in caplog.records for t in _record_texts(r)], "logs")
    _assert_absent(secret, _metrics_texts(prometheus_registry), "metrics")
    record_figures(
        scenario="secrets_working_dsn", cli_runs=len(outputs), log_records=len(caplog.records)
    )


def _failing_dsns(pg_server: PostgresServer) -> dict[str, str]:
    real = pg_server.dsn()
    parts = conninfo_to_dict(real)
    return {
        "wrong_password": _replace_password(real, WRONG_PASSWORD),
        "wrong_password_keyword_form": (
            f"host={parts['host']} port={parts['port']} user={parts['user']} "
            f"password={WRONG_PASSWORD} dbname=postgres"
        ),
        "quoted_keyword_password": (
            f"host={parts['host']} port={parts['port']} user={parts['user']} "
            f"password='{WRONG_PASSWORD} x' dbname=postgres"
        ),
        "nothing_listening": f"postgresql://postgres:{WRONG_PASSWORD}@127.0.0.1:1/db",
    }


def _exercise_failing_dsn(dsn: str) -> list[str]:
    """Open the store and run the CLI with ``dsn``; return every text a user would see."""
    texts: list[str] = []
    settings = HistorySettings(
        graph_store_backend="postgres", postgres_dsn=dsn, postgres_connect_timeout=3
    )
    texts += [repr(settings), str(settings), json.dumps(settings.describe())]
    with pytest.raises(StoreUnavailable) as caught, create_graph_store_sync(settings):
        pass
    texts += [str(caught.value), repr(caught.value)]
    texts.append("".join(traceback.format_exception(caught.value)))
    for args in (["doctor"], ["stats"]):
        code, output = _cli(args, dsn)
        assert code == 3, output  # exit code 3: the store was really unreachable
        texts.append(output)
    return texts


@pytest.mark.postgres
@pytest.mark.parametrize(
    "case",
    [
        "wrong_password",
        "wrong_password_keyword_form",
        "quoted_keyword_password",
        "nothing_listening",
    ],
)
def test_failing_dsn_password_never_surfaces(
    case: str,
    pg_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
    prometheus_registry: Any,
    library_logger: None,
) -> None:
    dsn = _failing_dsns(pg_server)[case]
    assert WRONG_PASSWORD in dsn
    caplog.set_level(logging.DEBUG)
    texts = _exercise_failing_dsn(dsn)
    if case.startswith("wrong_password"):
        assert any("password authentication failed" in t for t in texts), texts
    _assert_absent(WRONG_PASSWORD, texts, f"{case}: exceptions or CLI output")
    _assert_absent(
        WRONG_PASSWORD, [t for r in caplog.records for t in _record_texts(r)], f"{case}: logs"
    )
    _assert_absent(WRONG_PASSWORD, _metrics_texts(prometheus_registry), f"{case}: metrics")


# A DSN that libpq cannot parse, or holding a value libpq would refuse when connecting, is a
# configuration error (exit 2), and the error says what is wrong in fixed words: libpq's
# own parse errors quote the DSN, password included.
UNPARSABLE_DSNS = {
    "uri_missing_colon": f"postgres//user:{WRONG_PASSWORD}@@host",
    "uri_one_slash": f"postgresql:/u:{WRONG_PASSWORD}@h",
    "uri_password_with_space": f"postgresql://u:{WRONG_PASSWORD} x@h/db",
    "keyword_password_with_space": f"host=h user=u password={WRONG_PASSWORD} x dbname=d",
    "keyword_unterminated_quote": f"host=h password='{WRONG_PASSWORD}",
    "uri_unclosed_ipv6": f"postgresql://postgres:{WRONG_PASSWORD}@[::1/db",
    "uri_bad_escape": f"postgresql://u:{WRONG_PASSWORD}%zz@h/db",
    "password_as_option_name": f"host=h {WRONG_PASSWORD}=x",
    "uri_unknown_query_parameter": f"postgresql://u@h/db?{WRONG_PASSWORD}=1",
    "bad_port": f"postgresql://postgres:{WRONG_PASSWORD}@127.0.0.1:notaport/db",
    "bad_option": f"postgresql://postgres:{WRONG_PASSWORD}@127.0.0.1:5432/db?sslmode=bogus",
}


@pytest.mark.parametrize("case", sorted(UNPARSABLE_DSNS))
def test_unparsable_dsn_is_a_config_error_that_never_quotes_it(
    case: str, caplog: pytest.LogCaptureFixture, library_logger: None
) -> None:
    dsn = UNPARSABLE_DSNS[case]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as caught:
        HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
    assert caught.value.variable == "ORCHEO_POSTGRES_DSN"
    texts = [str(caught.value), repr(caught.value)]
    texts.append("".join(traceback.format_exception(caught.value)))
    for args in (["doctor"], ["doctor", "--json"], ["stats"], ["export"]):
        code, output = _cli(args, dsn)
        assert code == 2, (args, output)  # invalid configuration, not "unreachable"
        assert "ORCHEO_POSTGRES_DSN" in output, output
        texts.append(output)
    _assert_absent(WRONG_PASSWORD, texts, f"{case}: exceptions or CLI output")
    _assert_absent(
        WRONG_PASSWORD, [t for r in caplog.records for t in _record_texts(r)], f"{case}: logs"
    )


@pytest.mark.postgres
def test_secret_conninfo_parameters_are_never_shown(
    pg_server: PostgresServer, fresh_pg_dsn: str, library_logger: None
) -> None:
    # sslpassword (the client key's passphrase) is a secret like password; sslkey and
    # the other ssl* parameters are paths and are shown.
    dsn = make_conninfo(fresh_pg_dsn, sslpassword=WRONG_PASSWORD, sslkey="/etc/agent/client.key")
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
    described = settings.describe()
    assert "sslpassword=***" in described["postgres_dsn"]
    assert "sslkey=/etc/agent/client.key" in described["postgres_dsn"]
    texts = [repr(settings), str(settings), json.dumps(described)]
    for args in (["doctor"], ["doctor", "--json"]):
        code, output = _cli(args, dsn)
        assert code == 0, output  # the server really accepted the DSN
        texts.append(output)
    _assert_absent(WRONG_PASSWORD, texts, "sslpassword")
    _assert_absent(pg_server.password, texts, "password")


# --- message bodies -----------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[BaseStore]:
    settings = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "store.sqlite"
    )
    with create_graph_store_sync(settings) as store:
        yield store


def test_message_bodies_never_reach_logs_or_metrics(
    sqlite_store: BaseStore,
    caplog: pytest.LogCaptureFixture,
    prometheus_registry: Any,
    record_figures: Record,
) -> None:
    caplog.set_level(logging.DEBUG)
    faulty = FaultyStore(sqlite_store)
    reports: list[HistoryReport] = []
    chat = int(uuid.uuid4().int % 10**9)

    def node(**values: str) -> Any:
        values.setdefault("read_timeout_seconds", "0.5")
        values.setdefault("write_timeout_seconds", "0.5")
        values.setdefault("breaker_min_calls", "1000")  # only the breaker case trips it
        return build_graph(
            AgentNode(
                RecordingChatModel(),
                use_graph_chat_history=True,
                toggles=toggles(**values),
                write_backoff_seconds=0,
                on_report=reports.append,
            ),
            faulty,
        )

    def run(graph: Any, label: str, **extra: Any) -> HistoryReport:
        text = f"{label}: {BODY_SENTINEL} ünïcødé 😀"
        state = {**telegram_callback(chat, text, message_id=f"{label}-id"), **extra}
        out = graph.invoke(state, new_thread())
        assert BODY_SENTINEL in str(out["messages"][-1].content)  # the answer has the body
        return reports[-1]

    healthy = node()
    assert run(healthy, "healthy").fallbacks == ()
    faulty.fail_reads = True
    assert run(healthy, "read fails").fallbacks == ("read_failed",)
    faulty.fail_reads, faulty.fail_writes = False, True
    assert run(healthy, "write fails").fallbacks == ("write_failed",)
    faulty.fail_writes = False
    faulty.hang = threading.Event()
    try:
        assert run(healthy, "store hangs").fallbacks == ("read_timeout",)
    finally:
        faulty.hang.set()
        faulty.hang = None
    breaker = node(breaker_min_calls="1")
    faulty.fail_reads = True
    assert run(breaker, "breaker trips").fallbacks == ("read_failed",)
    assert run(breaker, "breaker open").fallbacks == ("breaker_open",)
    faulty.fail_reads = False
    shadow = node(mode="shadow")
    assert run(shadow, "shadow").fallbacks == ()
    thread = {"messages": [{"role": "user", "content": [{"type": "text", "text": BODY_SENTINEL}]}]}
    assert run(shadow, "content blocks", **thread).fallbacks == ()
    no_key = build_graph(
        AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            history_key_candidates=["{{ inputs.message.text }}"],  # the body is not a valid key
            toggles=toggles(),
            on_report=reports.append,
        ),
        faulty,
    )
    # A newline makes the body an invalid key (any other text would be a valid one).
    assert run(no_key, "no\nkey").fallbacks == ("no_valid_key",)

    # The faults were real, and there is something to inspect.
    assert {"get", "put"} <= set(faulty.calls)
    library = [r for r in caplog.records if r.name == "agent_history"]
    events = {getattr(r, "event", None) for r in library}
    assert {"history_fallback", "breaker_open", "shadow_payload_differs"} <= events, events
    _assert_absent(BODY_SENTINEL, [t for r in caplog.records for t in _record_texts(r)], "logs")
    _assert_absent(BODY_SENTINEL, _metrics_texts(prometheus_registry), "metrics")
    _assert_absent(BODY_SENTINEL, [repr(r) for r in reports], "history reports")
    record_figures(
        scenario="secrets_bodies",
        runs=len(reports),
        runs_with_fallbacks=sum(1 for r in reports if r.fallbacks),
        log_records=len(caplog.records),
        leaks=0,
    )


# --- driver error text ----------------------------------------------------------------------


def _postgres_error(dsn: str, body: str) -> psycopg.Error:
    """A real error of the test server whose message quotes ``body``."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("SELECT %s::int", (body,))
        except psycopg.Error as exc:
            return exc
    raise AssertionError("the server accepted the value")


def _sqlite_error(path: Path, body: str) -> sqlite3.Error:
    """A real SQLite error whose message quotes ``body`` (a table name)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f'SELECT * FROM "{body}"')
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the table exists")


@pytest.mark.postgres
def test_driver_error_text_keeps_the_kind_of_error_and_drops_the_data(
    pg_server: PostgresServer, fresh_pg_dsn: str, tmp_path: Path
) -> None:
    postgres = _postgres_error(fresh_pg_dsn, BODY_SENTINEL)
    sqlite = _sqlite_error(tmp_path / "x.sqlite", BODY_SENTINEL)
    wrong = _replace_password(pg_server.dsn(), WRONG_PASSWORD)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(wrong, connect_timeout=3)
    # The drivers really quote the data (and the user name) in their first line.
    assert BODY_SENTINEL in str(postgres).splitlines()[0]
    assert BODY_SENTINEL in str(sqlite).splitlines()[0]
    assert safe_error_text(postgres) == "InvalidTextRepresentation [22P02]"
    assert safe_error_text(sqlite) == "OperationalError [SQLITE_ERROR]: no such table"
    assert safe_error_text(refused.value, wrong) == (
        "OperationalError: password authentication failed"
    )
    timeout = TimeoutError("store call exceeded its 2s budget")
    assert safe_error_text(timeout) == "TimeoutError: budget"
    config = ConfigError("ORCHEO_POSTGRES_DSN", f"bad {WRONG_PASSWORD}")
    assert safe_error_text(config, f"postgresql://u:{WRONG_PASSWORD}@h/d") == (
        "ConfigError: ORCHEO_POSTGRES_DSN: bad ***"
    )


class DriverErrorStore(FaultyStore):
    """Fails reads and writes with a real driver error that quotes user data."""

    def __init__(self, inner: BaseStore, error: Exception) -> None:
        super().__init__(inner)
        self.error = error

    def _check(self, ops: list[Any]) -> None:
        super()._check(ops)
        raise self.error


@pytest.mark.postgres
def test_store_errors_are_logged_without_the_data_they_quote(
    sqlite_store: BaseStore,
    fresh_pg_dsn: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    reports: list[HistoryReport] = []
    for error in (
        _postgres_error(fresh_pg_dsn, BODY_SENTINEL),
        _sqlite_error(tmp_path / "x.sqlite", BODY_SENTINEL),
    ):
        graph = build_graph(
            AgentNode(
                RecordingChatModel(),
                use_graph_chat_history=True,
                toggles=toggles(breaker_min_calls="1000"),
                write_backoff_seconds=0,
                on_report=reports.append,
            ),
            DriverErrorStore(sqlite_store, error),
        )
        out = graph.invoke(telegram_callback(7, "hello"), new_thread())
        assert out["messages"][-1].content == "echo: hello"
        assert reports[-1].fallbacks[0] == "read_failed"
    logged = [t for r in caplog.records for t in _record_texts(r)]
    assert any("InvalidTextRepresentation" in t for t in logged)  # the error is still named
    _assert_absent(BODY_SENTINEL, logged, "logs of store errors")
