"""Search one kernel's knob space: coordinate descent from the defaults, one knob's values per measured batch.

Each batch measures the incumbent beside the candidates (same build, same interleaved rounds), and a
candidate replaces it only when faster by more than MARGIN: noise does not walk the knobs away from the
measured defaults. The knobs judged in the whole step (STEP_KNOBS, graphllm/tools/tune/context.py) stay at
their values here. A last batch measures the defaults beside the winner for the reported speedup (the defaults stay if
the winner is not faster there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...codegen.knobs import Knob, defaults
from ...errors import GraphLLMError
from .measure import KernelBench

STEP_KNOBS = frozenset({"large_from", "key_splits"})  # GEMV/GEMM crossover, attention key splits
MARGIN = 0.02


@dataclass
class SearchResult:
    """A kernel's winning knob values, the default's and the winner's score (same run), candidates tried."""

    knobs: dict[str, Any]
    default_s: float
    tuned_s: float
    candidates: int
    rejected: int


Progress = Callable[[int, float, float], None]  # (candidates tried, best score, default score)


def _frozen(knobs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(knobs.items(), key=lambda kv: kv[0]))


def search(bench: KernelBench, knobs: tuple[Knob, ...], deadline: float, max_trials: int | None,
           progress: Progress) -> SearchResult:
    """Coordinate descent until a sweep gains nothing, the deadline (time.monotonic) passes or max_trials are tried."""
    start = defaults(knobs)
    (default_s,) = bench.measure([start])
    if default_s is None:
        raise GraphLLMError(f"the default {bench.req.op} kernel differs from the reference: not tuning it")
    best, best_s, tried, trials, rejected = start, default_s, {_frozen(start)}, 0, 0
    free = [k for k in knobs if k.name not in STEP_KNOBS and len(k.values) > 1]
    improved = True
    while improved:
        improved = False
        for knob in free:
            room = None if max_trials is None else max_trials - trials
            cands = [c for c in ({**best, knob.name: v} for v in knob.values) if _frozen(c) not in tried][:room]
            if not cands or time.monotonic() > deadline:
                continue
            tried.update(_frozen(c) for c in cands)
            trials += len(cands)
            incumbent, *scores = bench.measure([best, *cands])
            rejected += sum(s is None for s in scores)
            valid = [(s, i) for i, s in enumerate(scores) if s is not None]
            if incumbent is not None and valid and min(valid)[0] < incumbent * (1 - MARGIN):
                best_s, best = min(valid)[0], cands[min(valid)[1]]
                improved = True
            progress(trials, best_s, default_s)
    if best != start:
        default_s, best_s = bench.measure([start, best])  # type: ignore[assignment]  # both passed before
        if best_s >= default_s:  # the gain did not hold in the same-run comparison
            best, best_s = start, default_s
    return SearchResult(best, default_s, best_s, trials, rejected)
