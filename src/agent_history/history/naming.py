"""Where a conversation lives: namespace labels checked, keys encoded into one label.

LangGraph forbids ``.`` in namespace labels and its SQL stores join labels with ``.``, so
a key is stored under a label with ``%`` written ``%25`` and ``.`` written ``%2E``: an
injective encoding that leaves every key without ``%`` or ``.`` (``telegram:123``,
``wecom_cs:kf:user``) byte-identical to the label it was stored under before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from agent_history.errors import InvalidNamespace
from agent_history.keys import FORBIDDEN_KEY_CHARS, require_history_key, validate_history_key

__all__ = ["conversation_namespace", "key_label", "key_of_label", "validate_namespace"]

_ENCODED = re.compile("%(25|2E)")
_DECODED = {"25": "%", "2E": "."}


def key_label(key: str) -> str:
    """The namespace label that holds conversation ``key`` (``%`` -> ``%25``, ``.`` -> ``%2E``).

    Raises:
        InvalidKey: ``key`` is not a valid conversation key.
    """
    require_history_key(key)
    if "%" not in key and "." not in key:
        return key
    return key.replace("%", "%25").replace(".", "%2E")


def key_of_label(label: str) -> str | None:
    """The conversation key stored under ``label``, or None when no valid key encodes to it
    (a label written by other code, or under rules older than today's)."""
    key = _ENCODED.sub(lambda m: _DECODED[m.group(1)], label) if "%" in label else label
    if validate_history_key(key) is not None:
        return None
    return key if key_label(key) == label else None


@functools.lru_cache(maxsize=256)
def _checked(labels: tuple[str, ...]) -> tuple[str, ...]:
    if not labels:
        raise InvalidNamespace("a history namespace needs at least one label")
    for index, label in enumerate(labels):
        if not label or label.isspace():
            raise InvalidNamespace(f"namespace label {index} is empty")
        if "." in label:
            raise InvalidNamespace(
                f"namespace label {index} contains '.': pass the labels separately, "
                "e.g. ('tenant_a', 'support'), not ('tenant_a.support',)"
            )
        if FORBIDDEN_KEY_CHARS.search(label):
            raise InvalidNamespace(f"namespace label {index} contains a control character")
    return labels


def validate_namespace(labels: Sequence[str]) -> tuple[str, ...]:
    """Check a history namespace prefix; the one check for `ChatHistory`, `AgentNode` and
    the CLI.

    Every label must be a non-blank string without ``.`` (``("tenant_a.support",)`` would
    otherwise reach the rows of ``("tenant_a", "support")`` in the SQL stores) and without
    control characters.

    Returns:
        The labels as a tuple.

    Raises:
        InvalidNamespace: naming the label's position and the problem.
    """
    if isinstance(labels, str):
        raise InvalidNamespace("a history namespace is a sequence of labels, not a string")
    checked = tuple(labels)
    for index, label in enumerate(checked):
        if not isinstance(label, str):
            raise InvalidNamespace(f"namespace label {index} is not a string")
    return _checked(checked)


def conversation_namespace(namespace: Sequence[str], key: str) -> tuple[str, ...]:
    """The store namespace of conversation ``key`` under the prefix ``namespace``.

    Raises:
        InvalidNamespace: a label of ``namespace`` is rejected.
        InvalidKey: ``key`` is rejected (with its reason code).
    """
    if type(key) is str and type(namespace) is tuple:
        try:
            return _conversation_namespace(namespace, key)
        except TypeError:  # an unhashable label: validated (and refused) below
            pass
    return _namespace_of(namespace, key)


def _namespace_of(namespace: Sequence[str], key: str) -> tuple[str, ...]:
    return (*validate_namespace(namespace), key_label(key))


# Every call of a conversation validates the same prefix and key: remember the answers
# (a refused one raises, and is not remembered).
_conversation_namespace = functools.lru_cache(maxsize=256)(_namespace_of)
