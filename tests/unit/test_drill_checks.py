"""The drill's checks on hand-made runs: effects, runs in flight at a flip, turns lost or
stored twice, and the audit trail."""

from __future__ import annotations

import orjson

from agent_history.drill_checks import (
    ANSWER_PREFIX,
    Behaviour,
    Run,
    Stage,
    StoreCalls,
    judge,
)

RW, RO, MEM = Behaviour.READ_WRITE, Behaviour.READ_ONLY, Behaviour.IN_MEMORY


def _audit(*entries: tuple[str, str, object]) -> bytes:
    lines = [{"change": c, "source": s, "after": a} for c, s, a in entries]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


FLIPPED = _audit(("mode", "env", "off"))
AUDIT = FLIPPED + _audit(("mode", "env", "read_write"))
STAGES = [
    Stage("baseline", "baseline", (RW,), 0.0, 0),
    Stage("off", "flip", (MEM,), 1.0, 0),
    Stage("off", "return", (RW,), 2.0, len(FLIPPED)),
]


def _run(index: int, stage: int, end: int, reads: int, writes: int, seen: list[int]) -> Run:
    """Run ``index`` of conversation 0; the model saw the turns of the runs in ``seen``."""
    run = Run(index, 0, f"t{index}", stage, stage + 0.25, StoreCalls(reads, writes), end)
    earlier = [turn for i in seen for turn in (("user", f"t{i}"), ("assistant", f"echo: t{i}"))]
    run.payloads = [[*earlier, run.user]]
    run.answered = True
    return run


def _stored(*indexes: int) -> dict[int, list[tuple[str, str]]]:
    turns = [("user", f"t{i}") for i in indexes]
    return {0: [turn for user in turns for turn in (user, ("assistant", ANSWER_PREFIX + user[1]))]}


def test_a_sound_drill_passes_with_the_time_until_the_effect() -> None:
    runs = [
        _run(0, 0, 0, 1, 2, []),
        _run(1, 1, 1, 0, 0, []),  # off: in memory
        _run(2, 2, 2, 1, 2, [0]),  # back: sees what was stored, not the off run
    ]

    rows, problems = judge(STAGES, runs, _stored(0, 2), AUDIT)

    assert problems == []
    assert [(r.switch, r.ok, r.runs, r.failed, r.lost) for r in rows] == [
        ("baseline", True, 1, 0, 0),
        ("off", True, 1, 0, 0),
    ]
    assert rows[0].effect_ms is None and rows[1].effect_ms == 250.0


def test_a_run_in_flight_at_the_flip_may_behave_either_way_the_others_may_not() -> None:
    runs = [
        _run(0, 0, 1, 1, 2, []),  # started in read_write, ended after the flip: wrote
        _run(1, 1, 1, 1, 0, [0]),  # started after the flip: read the store while off
        _run(2, 2, 2, 1, 2, [0]),
    ]

    rows, _ = judge(STAGES, runs, _stored(0, 2), AUDIT)

    assert rows[0].ok
    assert rows[1].problems == ("no run showed the effect", "1 run touched the store")


def test_turns_missing_are_lost_and_turns_stored_twice_are_reported() -> None:
    runs = [_run(0, 0, 0, 1, 2, []), _run(1, 1, 1, 0, 0, []), _run(2, 2, 2, 1, 2, [0])]
    stored = _stored(0, 0)  # run 0 stored twice, run 2 missing

    rows, problems = judge(STAGES, runs, stored, AUDIT)

    assert rows[0].problems == ("a turn stored 2 times", "a turn stored 2 times")
    assert rows[1].lost == 2 and not rows[1].ok
    assert problems == []


def test_a_turn_no_run_wrote_and_turns_out_of_order_are_problems() -> None:
    runs = [_run(0, 0, 0, 1, 2, []), _run(1, 1, 1, 0, 0, []), _run(2, 2, 2, 1, 2, [0])]
    stored = {0: [*_stored(2)[0], *_stored(0)[0], ("user", "t1")]}

    _, problems = judge(STAGES, runs, stored, AUDIT)

    assert problems == [
        "off: a turn stored that no run wrote",
        "conversation 1: turns stored out of order",
    ]


def test_a_flip_or_return_missing_from_the_audit_file_fails_its_row() -> None:
    runs = [_run(0, 0, 0, 1, 2, []), _run(1, 1, 1, 0, 0, []), _run(2, 2, 2, 1, 2, [0])]
    rows, _ = judge(STAGES, runs, _stored(0, 2), FLIPPED)

    assert rows[1].problems == ("return not in the audit file",)
