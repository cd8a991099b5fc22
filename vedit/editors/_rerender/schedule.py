"""Rerender's step schedule: constraint periods, the SDEdit start and the wavefront's batched calls."""

from __future__ import annotations

import math



def period_steps(period: tuple[float, float] | list[float], steps: int,
                 ends: tuple[bool, bool] = (True, True)) -> range:
    """Step indices i with steps * p0 <= i <= steps * p1, each end inclusive or exclusive per `ends`.

    The released code's comparisons: shape fusion and AdaIN include both ends, pixel fusion excludes
    both (20 steps, (0.5, 0.8): 11..15)."""
    lo, hi = period[0] * steps, period[1] * steps
    first = math.ceil(lo - 1e-6) if ends[0] else math.floor(lo + 1e-6) + 1
    last = math.floor(hi + 1e-6) if ends[1] else math.ceil(hi - 1e-6) - 1
    return range(first, last + 1)


def start_step(x0_strength: float, steps: int) -> int:
    """SDEdit start: x0_strength 0.75 of 20 steps starts at step int(20 * 0.25) = 5."""
    return min(int(steps * (1.0 - x0_strength) + 1e-6), steps - 1)


Pass = tuple[int, bool, int]  # (key frame position, fused pass?, step)


def is_final_pass(n: int, fused: bool, i: int, fused_begin: int | None) -> bool:
    """Whether key frame n's direct or fused pass at step i is the one the sequential loop keeps
    (its features and x0 are what later key frames read)."""
    return fused == (fused_begin is not None and n > 0 and i >= fused_begin)


def wavefront_plan(num_keys: int, start: int, steps: int, fused_begin: int | None, cross_frame: bool,
                   first_steps: set[int], max_keys: int | None = None) -> list[list[Pass]]:
    """The batched UNet calls of the wavefront schedule, each a list of (key position, fused, step).

    Key frame n at step s needs, from earlier calls: key frame 0's step s (its attention features,
    and its x0 where `first_steps` holds s: shape fusion / AdaIN) and, with cross-frame attention,
    key frame n-1's step s from the pass that is final there (the fused pass from `fused_begin` on,
    None = no fused pass). Its fused pass starts once its direct pass and key frame n-1 are done
    (the pixel reference needs both outputs). Every call takes all passes that are ready, lowest
    key frame first (the critical path), at most `max_keys` of them.
    """
    def ready(n: int, i: int) -> bool:
        if n == 0:
            return True
        if (cross_frame or i in first_steps) and (0, i) not in done:
            return False
        return not (cross_frame and n >= 2 and (n - 1, i) not in done)

    active: dict[tuple[int, bool], int] = {(n, False): start for n in range(num_keys)}
    done: set[tuple[int, int]] = set()
    finished: set[int] = set()
    waiting: list[int] = []  # direct pass done, fused pass not started
    calls: list[list[Pass]] = []
    while active:
        batch = sorted(lane for lane, i in active.items() if ready(lane[0], i))[:max_keys]
        if not batch:
            raise RuntimeError("rerender: wavefront schedule stalled (a bug)")
        calls.append([(n, fused, active[(n, fused)]) for n, fused in batch])
        for n, fused in batch:
            i = active.pop((n, fused))
            if is_final_pass(n, fused, i, fused_begin):
                done.add((n, i))
            if i + 1 < steps:
                active[(n, fused)] = i + 1
            elif fused or fused_begin is None or n == 0:
                finished.add(n)
            else:
                waiting.append(n)
        for n in [n for n in waiting if n - 1 in finished]:
            waiting.remove(n)
            active[(n, True)] = fused_begin
    return calls
