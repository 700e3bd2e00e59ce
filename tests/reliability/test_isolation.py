"""Turns stored under one key or namespace never show up under another (checked against a model)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from langgraph.store.base import BaseStore

from agent_history import AgentNode, HistoryReport
from agent_history.errors import InvalidKey, InvalidNamespace
from agent_history.history import ChatHistory
from agent_history.keys import KEY_PATTERN, resolve_history_key, validate_history_key
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record, examples
from tests.support.agent_graphs import build_graph, new_thread, toggles

# Keys that differ only by case, by where the ':' is, or by a trailing ':'/'-'/'_'. "n_1"
# and "nx1" also name namespaces below: a conversation "n_1" sits where a nested
# namespace starts, and "_" is a LIKE wildcard that would match "nx1".
TRICKY_KEYS = [
    "a:b1", "a:b:1", "A:b1", "a:b1:", "a:B1", "A:B1", ":a:b1", "a::b1", "ab1", "a-b1",
    "a_b1", "a:b1-", "a:b1_", "n_1", "nx1", "N_1", "telegram:1", "telegram:01", "Telegram:1",
]  # fmt: skip
assert all(KEY_PATTERN.match(key) for key in TRICKY_KEYS)

NAMESPACES = ("base", "n_1", "nx1")
"""Namespace suffixes: ``(iso, run)``, ``(iso, run, n_1)`` and ``(iso, run, nx1)``."""

KEY = st.sampled_from(TRICKY_KEYS) | st.text(alphabet="aAbB01:_-", min_size=1, max_size=8)
IDS = st.sampled_from(["m1", "m2", "m3", None])  # ids are reused across keys on purpose
OP = st.one_of(
    st.tuples(
        st.just("append"),
        st.sampled_from(NAMESPACES),
        KEY,
        st.lists(st.tuples(st.sampled_from(["user", "assistant"]), IDS), min_size=1, max_size=3),
    ),
    st.tuples(st.just("delete"), st.sampled_from(NAMESPACES), KEY, st.just([])),
)

Model = dict[tuple[str, str], list[tuple[str, str, str | None]]]


def _namespace(run: str, name: str) -> tuple[str, ...]:
    return ("iso", run) if name == "base" else ("iso", run, name)


@pytest.fixture
def persistent_store(persistent_settings: HistorySettings) -> Iterator[BaseStore]:
    with create_graph_store_sync(persistent_settings) as store:
        yield store


def _apply(
    histories: dict[str, ChatHistory], model: Model, ops: list[tuple[str, str, str, list[Any]]]
) -> int:
    """Apply ``ops`` to the store and to the model; return the number of turns written."""
    written = 0
    for number, (kind, ns, key, turns) in enumerate(ops):
        history = histories[ns]
        if kind == "delete":
            removed = history.delete(key)
            assert removed == len(model.pop((ns, key), []))
            continue
        messages = [
            {"role": role, "content": f"{ns}/{key}/op{number}/#{i}", "id": mid}
            for i, (role, mid) in enumerate(turns)
        ]
        stored = model.setdefault((ns, key), [])
        known = {mid for _, _, mid in stored if mid is not None}
        expected_new = []
        for message in messages:
            if message["id"] is not None and message["id"] in known:
                continue  # a re-delivered id in this conversation is skipped
            if message["id"] is not None:
                known.add(message["id"])
            expected_new.append((message["role"], message["content"], message["id"]))
        result = history.append(key, messages)
        assert result.appended == len(expected_new)
        stored.extend(expected_new)
        written += len(expected_new)
        if not stored:
            del model[(ns, key)]
    return written


def _check(histories: dict[str, ChatHistory], model: Model, keys: set[str]) -> int:
    """Read every key of every namespace back and compare with the model."""
    reads = 0
    for ns, history in histories.items():
        for key in sorted(keys):
            turns = list(history.read(key))
            expected = model.get((ns, key), [])
            assert [(t.role, t.content, t.id) for t in turns] == expected, (ns, key)
            assert [t.seq for t in turns] == list(range(1, len(turns) + 1)), (ns, key)
            assert history.count(key) == len(expected)
            reads += 1
        listed = sorted(history.keys())
        assert listed == sorted(k for (n, k), v in model.items() if n == ns and v), ns
    return reads


@pytest.fixture
def totals(persistent_backend: str, record_figures: Record) -> Iterator[dict[str, int]]:
    """Figures summed over every example of one property-test call, recorded at the end."""
    counts = {"examples": 0, "turns": 0, "reads": 0}
    yield counts
    record_figures(scenario="isolation", backend=persistent_backend, **counts, leaks=0)


@settings(
    deadline=None,
    max_examples=examples(30),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OP, min_size=1, max_size=25))
@example(
    ops=[
        ("append", ns, key, [("user", "m1"), ("assistant", None)])
        for ns in NAMESPACES
        for key in TRICKY_KEYS
    ]
    + [("delete", "base", "n_1", []), ("delete", "n_1", "a:b1", [])]
)
def test_keys_and_namespaces_are_isolated(
    persistent_store: BaseStore,
    totals: dict[str, int],
    ops: list[tuple[str, str, str, list[Any]]],
) -> None:
    run = "r" + uuid.uuid4().hex[:12]
    histories = {
        ns: ChatHistory(persistent_store, namespace=_namespace(run, ns)) for ns in NAMESPACES
    }
    model: Model = {}
    written = _apply(histories, model, ops)
    reads = _check(histories, model, set(TRICKY_KEYS) | {key for _, _, key, _ in ops})
    totals["examples"] += 1
    totals["turns"] += written
    totals["reads"] += reads


def test_node_keys_differing_by_case_or_colon_stay_apart(
    persistent_store: BaseStore,
) -> None:
    # Through the node: candidates that render to near-identical keys keep separate logs.
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}:a:b1", f"{run}:a:b:1", f"{run.upper()}:A:b1", f"{run}:a:b1:"]
    reports: list[HistoryReport] = []
    for round_ in range(2):
        for key in keys:
            node = AgentNode(
                RecordingChatModel(),
                use_graph_chat_history=True,
                history_key_candidates=["{{ inputs.key }}"],
                toggles=toggles(),
                on_report=reports.append,
            )
            state = {"inputs": {"key": key, "message": f"{key} says {round_}"}}
            build_graph(node, persistent_store).invoke(state, new_thread())
            assert reports[-1].key == key
    for key in keys:
        stored = [t.content for t in ChatHistory(persistent_store).read(key)]
        assert stored == [
            f"{key} says 0", f"echo: {key} says 0", f"{key} says 1", f"echo: {key} says 1"
        ]  # fmt: skip


# --- free-form keys: one verdict in every entry point, one conversation per key ---------------

FREE_FORM_KEYS = [
    "alice@example.com", "tenant.a/user 17", "tenant%2Ea/user 17", "a.b", "a%2Eb", "a%252Eb",
    "%", "%25", ".", "..", "用户:张三", "👩🏽\u200d🚀", " padded ", "padded", "a b", "a  b",
    "3f2b8c1e-7d4a-4c8e-9b1a-2f6d5e4c3b2a", "telegram:123", "wecom_cs:kf:user", "k" * 256,
    "k" * 257, "", " ", "a\nb", "555\n", "555", "\x00", "x\ud800", "a\u202eb", "{{x}}", "a}}b",
]  # fmt: skip
ANY_KEY = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=30),
    st.text(alphabet=".:/@% _-aA1😀张\n\t", max_size=12),
    st.text(alphabet="k.", min_size=250, max_size=260),
    st.tuples(st.text(max_size=5), st.characters(categories=["Cs"])).map("".join),
    st.sampled_from(FREE_FORM_KEYS),
)


def _has_template_opener(key: str) -> bool:
    return "{{" in key or "{%" in key or "{#" in key


def test_every_entry_point_gives_a_key_the_same_verdict(
    persistent_store: BaseStore, persistent_backend: str, record_figures: Record
) -> None:
    # One namespace for every example: two distinct accepted keys sharing stored data
    # would show up as a read returning more than the key's own turn.
    history = ChatHistory(persistent_store, namespace=("iso", "k" + uuid.uuid4().hex[:12]))
    verdicts: dict[str, str | None] = {}

    @settings(deadline=None, max_examples=examples(240), database=None)
    @given(key=ANY_KEY)
    def check(key: str) -> None:
        reason = validate_history_key(key)
        if not _has_template_opener(key):  # a text with "{{" is a template, not a literal
            resolution = resolve_history_key({}, candidates=[key])
            assert resolution.key == (key if reason is None else None), repr(key)
            if reason is not None:
                assert [r.reason for r in resolution.rejected] == [reason]
        message = {"role": "user", "content": key, "id": key}
        if reason is None:
            # The id makes a key drawn twice a re-delivery: still exactly one turn.
            history.append(key, [message])
            assert [t.content for t in history.read(key)] == [key], repr(key)
        else:
            with pytest.raises(InvalidKey) as caught:
                history.append(key, [{"role": "user", "content": "x"}])
            assert caught.value.reason == reason.value
        verdicts[key] = reason

    for key in FREE_FORM_KEYS:
        check.hypothesis.inner_test(key)  # type: ignore[attr-defined]
    check()
    accepted = sorted(key for key, reason in verdicts.items() if reason is None)
    for key in accepted:  # after every write: each key still holds only its own turn
        assert [t.content for t in history.read(key)] == [key], repr(key)
    assert sorted(history.keys()) == accepted
    record_figures(
        scenario="free_form_keys",
        backend=persistent_backend,
        keys=len(verdicts),
        accepted=len(accepted),
        rejected=len(verdicts) - len(accepted),
        shared=0,
    )


def test_free_form_keys_through_the_node_keep_separate_logs(persistent_store: BaseStore) -> None:
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}@example.com", f"{run}.a/user 17", f"{run}%2Ea/user 17", f"{run} 用户 😀"]
    reports: list[HistoryReport] = []
    namespace = ["iso", "node" + run]
    for round_ in range(2):
        for key in keys:
            node = AgentNode(
                RecordingChatModel(),
                use_graph_chat_history=True,
                history_key_candidates=["{{ inputs.key }}"],
                history_namespace=namespace,
                toggles=toggles(),
                on_report=reports.append,
            )
            state = {"inputs": {"key": key, "message": f"#{keys.index(key)} r{round_}"}}
            build_graph(node, persistent_store).invoke(state, new_thread())
            assert reports[-1].key == key and reports[-1].fallbacks == ()
    history = ChatHistory(persistent_store, namespace=namespace)
    assert sorted(history.keys()) == sorted(keys)
    for number, key in enumerate(keys):
        assert [t.content for t in history.read(key)] == [
            f"#{number} r0", f"echo: #{number} r0", f"#{number} r1", f"echo: #{number} r1"
        ]  # fmt: skip


def test_a_dotted_namespace_label_never_reads_the_nested_namespace(
    persistent_store: BaseStore,
) -> None:
    # Before, ("tenant_a.support",) and ("tenant_a", "support") were the same rows.
    run = "r" + uuid.uuid4().hex[:12]
    ChatHistory(persistent_store, namespace=(run, "support")).append(
        "k", [{"role": "user", "content": "private"}]
    )
    dotted = ChatHistory(persistent_store, namespace=(f"{run}.support",))
    for attempt in (
        lambda: dotted.tail("k", 5),
        lambda: list(dotted.read("k")),
        lambda: dotted.count("k"),
        lambda: list(dotted.keys()),
        lambda: dotted.append("k", [{"role": "user", "content": "x"}]),
        lambda: dotted.delete("k"),
    ):
        with pytest.raises(InvalidNamespace, match=r"contains '\.'"):
            attempt()
    with pytest.raises(ValueError, match=r"'\.'"):
        AgentNode(RecordingChatModel(), history_namespace=[f"{run}.support"])
    stored = ChatHistory(persistent_store, namespace=(run, "support"))
    assert [t.content for t in stored.read("k")] == ["private"]


# --- values rendered into the default templates ---------------------------------------------


def _payload_texts(model: RecordingChatModel) -> list[str]:
    return [str(m.content) for m in model.calls[-1] if m.type != "system"]


def test_wecom_parties_whose_ids_shift_a_colon_never_read_each_other(
    persistent_store: BaseStore,
) -> None:
    # Before, (kf1, alice:x) and (kf1:alice, x) both became "wecom_cs:kf1:alice:x".
    run = uuid.uuid4().hex[:8]
    namespace = ["iso", "wecom" + run]
    parties = [(f"kf{run}", "alice:x"), (f"kf{run}:alice", "x")]
    keys = []
    for number, (open_kf_id, user) in enumerate(parties):
        model, reports = RecordingChatModel(), []
        node = AgentNode(
            model,
            use_graph_chat_history=True,
            history_namespace=namespace,
            toggles=toggles(),
            on_report=reports.append,
        )
        state = {
            "inputs": {"message": f"secret of party {number}"},
            "results": {"wecom_cs_sync": {"open_kf_id": open_kf_id, "external_userid": user}},
        }
        build_graph(node, persistent_store).invoke(state, new_thread())
        # Each party's first run sees nothing but its own message.
        assert _payload_texts(model) == [f"secret of party {number}"]
        keys.append(reports[-1].key)
    assert keys == [f"wecom_cs:kf{run}:alice%3Ax", f"wecom_cs:kf{run}%3Aalice:x"]
    history = ChatHistory(persistent_store, namespace=namespace)
    assert sorted(history.keys()) == sorted(keys)


def test_a_chat_id_with_a_trailing_newline_is_not_the_same_chat(
    persistent_store: BaseStore,
) -> None:
    # Before, "555\n" was stripped into "telegram:555" and read that chat's history.
    chat = int(uuid.uuid4().int % 10**9)
    namespace = ["iso", "nl" + uuid.uuid4().hex[:8]]
    reports: list[HistoryReport] = []

    def run(chat_id: Any, text: str) -> RecordingChatModel:
        model = RecordingChatModel()
        node = AgentNode(
            model,
            use_graph_chat_history=True,
            history_namespace=namespace,
            toggles=toggles(),
            on_report=reports.append,
        )
        state = {
            "inputs": {"message": text},
            "results": {"telegram_events_parser": {"chat_id": chat_id}},
        }
        build_graph(node, persistent_store).invoke(state, new_thread())
        return model

    run(chat, "private to the real chat")
    assert reports[-1].key == f"telegram:{chat}"
    model = run(f"{chat}\n", "from the look-alike")
    assert reports[-1].key is None and "no_valid_key" in reports[-1].fallbacks
    assert _payload_texts(model) == ["from the look-alike"]
    stored = ChatHistory(persistent_store, namespace=namespace).read(f"telegram:{chat}")
    assert [t.content for t in stored] == [
        "private to the real chat", "echo: private to the real chat"
    ]  # fmt: skip
