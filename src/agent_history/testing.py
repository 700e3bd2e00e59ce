"""Test helpers for applications built on agent-history: a deterministic offline chat
model that records what it was sent."""

from agent_history.offline_model import RecordingChatModel

__all__ = ["RecordingChatModel"]
