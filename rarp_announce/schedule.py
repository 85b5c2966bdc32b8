"""QEMU's announce timing (migration parameters announce-*), plus Nova's repeat of the whole burst."""

from __future__ import annotations

from dataclasses import dataclass

from rarp_announce.errors import InputError


@dataclass(frozen=True)
class Send:
    """One moment of a schedule: every target of an announcement gets a frame then."""

    offset: float  # seconds after the announcement started
    burst: int  # 1-based: which repeat of the burst
    round: int  # 1-based: which send inside the burst


@dataclass(frozen=True)
class Schedule:
    """Defaults are QEMU's: sends at 0, 50, 200, 450 and 800 ms, one burst."""

    initial_ms: int = 50
    max_ms: int = 550
    rounds: int = 5
    step_ms: int = 100
    repeat: int = 1
    repeat_interval_s: float = 1.0

    def __post_init__(self) -> None:
        # Bounds are QEMU's migrate_params_check; rounds=0 would announce nothing, so it is refused.
        _check_range("initial", self.initial_ms, 0, 100_000, "ms")
        _check_range("max", self.max_ms, 0, 100_000, "ms")
        _check_range("rounds", self.rounds, 1, 1000, "")
        _check_range("step", self.step_ms, 1, 10_000, "ms")
        _check_range("repeat", self.repeat, 1, 100, "")
        if not 0.001 <= self.repeat_interval_s <= 3600:
            raise InputError(
                f"invalid repeat-interval {self.repeat_interval_s}: expected 0.001..3600 seconds"
            )

    def burst_offsets_ms(self) -> list[int]:
        """Offsets of one burst, as QEMU's qemu_announce_timer_step computes them."""
        offsets = [0]
        for sent in range(1, self.rounds):
            remaining = self.rounds - sent
            gap = self.initial_ms + (self.rounds - remaining - 1) * self.step_ms
            if gap < 0 or gap > self.max_ms:
                gap = self.max_ms
            offsets.append(offsets[-1] + gap)
        return offsets

    def sends(self) -> list[Send]:
        """Every send of every burst, in time order.

        A burst that is still running when the next one starts is cut there, as QEMU resets its
        announce timer when `announce-self` is called again (what Nova's workaround does).
        """
        burst_ms = self.burst_offsets_ms()
        interval_ms = self.repeat_interval_s * 1000
        result: list[Send] = []
        for burst in range(self.repeat):
            start = burst * interval_ms
            cut = start + interval_ms if burst + 1 < self.repeat else float("inf")
            for index, offset in enumerate(burst_ms):
                if start + offset < cut:
                    result.append(Send((start + offset) / 1000, burst + 1, index + 1))
        return result

    @property
    def duration(self) -> float:
        return self.sends()[-1].offset


def _check_range(name: str, value: int, low: int, high: int, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        suffix = f" {unit}" if unit else ""
        raise InputError(f"invalid {name} {value!r}: expected an integer {low}..{high}{suffix}")
