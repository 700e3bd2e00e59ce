"""Keys encoded into namespace labels, and namespace labels checked, the same everywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_history.errors import InvalidKey, InvalidNamespace
from agent_history.history.naming import (
    conversation_namespace,
    key_label,
    key_of_label,
    validate_namespace,
)
from agent_history.keys import validate_history_key


@pytest.mark.parametrize(
    "key", ["telegram:123", "telegram:-100123", "wecom_cs:kf:user", "wecom_aibot:single:bob", "x"]
)
def test_todays_keys_are_their_own_label(key: str) -> None:
    # Conversations stored before free-form keys stay where they are.
    assert key_label(key) == key
    assert key_of_label(key) == key


def test_dot_and_percent_are_encoded() -> None:
    assert key_label("alice@example.com") == "alice@example%2Ecom"
    assert key_label("50%.") == "50%25%2E"
    assert key_label("a%2Eb") == "a%252Eb"  # not the label of "a.b"
    assert key_label("a.b") == "a%2Eb"
    assert conversation_namespace(("agent_chat_history",), "tenant.a/user 17") == (
        "agent_chat_history",
        "tenant%2Ea/user 17",
    )


@pytest.mark.parametrize("label", ["a%zz", "a%2e", "100%", "a.b", "", "a\nb", "%2525x%"])
def test_labels_no_key_encodes_to_are_not_keys(label: str) -> None:
    assert key_of_label(label) is None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_encoding_is_injective_and_reversible(first: str, second: str) -> None:
    for key in (first, second):
        if validate_history_key(key) is None:
            label = key_label(key)
            assert "." not in label and label
            assert key_of_label(label) == key
        else:
            with pytest.raises(InvalidKey):
                key_label(key)
    if first != second and validate_history_key(first) is None is validate_history_key(second):
        assert key_label(first) != key_label(second)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (("tenant_a.support",), "contains '.'"),
        ((), "at least one label"),
        (("ok", ""), "label 1 is empty"),
        (("ok", "  "), "label 1 is empty"),
        (("a\x00b",), "control character"),
        (("a\nb",), "control character"),
        (("ok", 5), "label 1 is not a string"),
        ("agent_chat_history", "not a string"),
    ],
)
def test_invalid_namespaces_are_rejected(labels: object, problem: str) -> None:
    with pytest.raises(InvalidNamespace, match=problem) as caught:
        validate_namespace(labels)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_valid_namespaces_pass_as_tuples() -> None:
    assert validate_namespace(["tenant_a", "support"]) == ("tenant_a", "support")
    assert validate_namespace(("agent chat history", "租户", "a:b/c@d")) == (
        "agent chat history",
        "租户",
        "a:b/c@d",
    )
