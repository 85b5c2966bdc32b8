"""The schedule against QEMU's own timer logic (net/announce.c) and its parameter bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rarp_announce.errors import InputError
from rarp_announce.schedule import Schedule, Send


def qemu_offsets(initial: int, max_: int, rounds: int, step: int) -> list[int]:
    """QEMU's qemu_announce_self_once/qemu_announce_timer_step, transcribed as written there."""
    offsets: list[int] = []
    now = 0
    remaining = rounds  # timer->round
    while True:
        offsets.append(now)  # qemu_announce_self_once sends, then decrements
        remaining -= 1
        if not remaining:
            return offsets
        gap = initial + (rounds - remaining - 1) * step
        if gap < 0 or gap > max_:
            gap = max_
        now += gap


def ms(schedule: Schedule) -> list[float]:
    return [round(send.offset * 1000, 6) for send in schedule.sends()]


def test_defaults_are_qemus() -> None:
    schedule = Schedule()
    assert (schedule.initial_ms, schedule.max_ms, schedule.rounds, schedule.step_ms) == (50, 550, 5, 100)
    assert schedule.burst_offsets_ms() == [0, 50, 200, 450, 800]
    assert schedule.sends() == [Send(0.0, 1, 1), Send(0.05, 1, 2), Send(0.2, 1, 3), Send(0.45, 1, 4), Send(0.8, 1, 5)]
    assert schedule.duration == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"rounds": 1}, [0]),
        ({"rounds": 2}, [0, 50]),
        ({"step_ms": 1}, [0, 50, 101, 153, 206]),
        ({"initial_ms": 0, "step_ms": 1}, [0, 0, 1, 3, 6]),
        # max caps a gap once initial + n*step exceeds it
        ({"max_ms": 150}, [0, 50, 200, 350, 500]),
        # initial above max: every gap is max
        ({"initial_ms": 600}, [0, 550, 1100, 1650, 2200]),
        ({"max_ms": 0}, [0, 0, 0, 0, 0]),
        ({"rounds": 8}, [0, 50, 200, 450, 800, 1250, 1800, 2350]),
    ],
)
def test_edge_values(params: dict[str, int], expected: list[int]) -> None:
    schedule = Schedule(**params)
    assert schedule.burst_offsets_ms() == expected
    assert ms(schedule) == expected
    assert [s.round for s in schedule.sends()] == list(range(1, len(expected) + 1))


@given(
    initial=st.integers(0, 100_000),
    max_=st.integers(0, 100_000),
    rounds=st.integers(1, 60),
    step=st.integers(1, 10_000),
)
def test_burst_is_qemus_timer(initial: int, max_: int, rounds: int, step: int) -> None:
    schedule = Schedule(initial_ms=initial, max_ms=max_, rounds=rounds, step_ms=step)
    assert schedule.burst_offsets_ms() == qemu_offsets(initial, max_, rounds, step)


def test_repeat_with_interval_longer_than_a_burst_keeps_every_burst_whole() -> None:
    schedule = Schedule(repeat=3, repeat_interval_s=1.0)
    assert ms(schedule) == [0, 50, 200, 450, 800, 1000, 1050, 1200, 1450, 1800, 2000, 2050, 2200, 2450, 2800]
    assert [(s.burst, s.round) for s in schedule.sends()] == [(b, r) for b in (1, 2, 3) for r in range(1, 6)]
    assert schedule.duration == pytest.approx(2.8)


def test_repeat_with_interval_shorter_than_a_burst_cuts_it_like_qemu_resets_its_timer() -> None:
    schedule = Schedule(repeat=3, repeat_interval_s=0.3)
    # bursts start at 0, 300, 600 ms; a send at or after the next start is dropped; the last runs whole
    assert ms(schedule) == [0, 50, 200, 300, 350, 500, 600, 650, 800, 1050, 1400]
    assert [(s.burst, s.round) for s in schedule.sends()] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3), (3, 4), (3, 5)
    ]


def test_repeat_interval_equal_to_a_send_drops_that_send() -> None:
    assert ms(Schedule(repeat=2, repeat_interval_s=0.2)) == [0, 50, 200, 250, 400, 650, 1000]


def test_sends_are_in_time_order_and_never_collide() -> None:
    for schedule in (Schedule(repeat=5, repeat_interval_s=0.07), Schedule(repeat=4, repeat_interval_s=2.5)):
        offsets = [s.offset for s in schedule.sends()]
        assert offsets == sorted(offsets)
        assert len(set(offsets)) == len(offsets)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"initial_ms": -1}, "invalid initial -1: expected an integer 0..100000 ms"),
        ({"initial_ms": 100_001}, "invalid initial 100001: expected an integer 0..100000 ms"),
        ({"max_ms": -1}, "invalid max -1: expected an integer 0..100000 ms"),
        ({"max_ms": 100_001}, "invalid max 100001: expected an integer 0..100000 ms"),
        ({"rounds": 0}, "invalid rounds 0: expected an integer 1..1000"),
        ({"rounds": 1001}, "invalid rounds 1001: expected an integer 1..1000"),
        ({"step_ms": 0}, "invalid step 0: expected an integer 1..10000 ms"),
        ({"step_ms": 10_001}, "invalid step 10001: expected an integer 1..10000 ms"),
        ({"repeat": 0}, "invalid repeat 0: expected an integer 1..100"),
        ({"repeat": 101}, "invalid repeat 101: expected an integer 1..100"),
        ({"repeat_interval_s": 0.0}, "invalid repeat-interval 0.0: expected 0.001..3600 seconds"),
        ({"repeat_interval_s": 3601.0}, "invalid repeat-interval 3601.0: expected 0.001..3600 seconds"),
        ({"rounds": True}, "invalid rounds True: expected an integer 1..1000"),
        ({"step_ms": 1.5}, "invalid step 1.5: expected an integer 1..10000 ms"),
    ],
)
def test_qemu_bounds_are_enforced(params: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as caught:
        Schedule(**params)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "params",
    [
        {"initial_ms": 0}, {"initial_ms": 100_000}, {"max_ms": 0}, {"max_ms": 100_000},
        {"rounds": 1}, {"rounds": 1000}, {"step_ms": 1}, {"step_ms": 10_000},
        {"repeat": 1}, {"repeat": 100}, {"repeat_interval_s": 0.001}, {"repeat_interval_s": 3600},
    ],
)
def test_bounds_themselves_are_accepted(params: dict[str, object]) -> None:
    assert Schedule(**params).sends()  # type: ignore[arg-type]
