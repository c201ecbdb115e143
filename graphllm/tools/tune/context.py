"""Judge the step-level knobs in the whole compiled model, not in an isolated kernel.

- `large_from` (GEMV/GEMM crossover) of each Linear kernel: decode steps of B one-token sequences (B = each
  allowed value; what continuous batching runs) with that kernel's steps all on the GEMV, then all on the
  GEMM, the rest of the model as built; the crossover is the smallest value from which the GEMM step is
  faster at every measured B.
- `key_splits` of each attention kernel: every allowed value built into one module and swapped into the
  model's decode steps (B = 1, 2, 4 sequences at position 192); the fastest per token wins by MARGIN.
Rounds interleave the variants; each variant's fastest round counts (as in measure.py). The executor's bound calls are used as they are, with only the
judged kernel's functions replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ...codegen.build import build_module
from ...codegen.compile import request_of
from ...codegen.lower import LowerRequest, lower
from ...plan import Step
from .measure import Calls, Workload, module_funcs, stages, variant
from .search import MARGIN

SPLIT_SEQS = (1, 2, 4)


class StepBench:
    """A loaded model's executor, set up for decode steps of up to `seqs` one-token sequences."""

    def __init__(self, llm: Any, seqs: int, rounds: int, workload: Workload = Workload()) -> None:
        self.ex, self.rounds = llm.executor, rounds
        self.keys = [request_of(llm.graph, s.node).key() if isinstance(s, Step) else None for s in self.ex.steps]
        # one step of `seqs` sequences fills the step inputs; a step of fewer reads their prefix (same layout)
        self.ex.run([1] * seqs, [workload.position] * seqs, [1] * seqs, list(range(seqs)))

    def steps_of(self, key: str) -> list[int]:
        """Indices of the kernel steps of one request key."""
        return [i for i, k in enumerate(self.keys) if k == key]

    def bound(self, seqs: int, swap: Callable[[int, Step], Callable[..., Any] | None]) -> Calls:
        """The decode step of `seqs` sequences, each step's function replaced by swap(index, step) unless None."""
        calls = self.ex.ffi_calls(seqs, seqs)  # the executor's own calls (tensors over its buffers)
        return [(swap(i, self.ex.steps[i]) or fn, args) for i, (fn, args) in enumerate(calls)]

    def fastest(self, variants: dict[Any, Calls]) -> dict[Any, float]:
        """Fastest seconds of each variant's step over rounds interleaved (a first round warms up)."""
        times: dict[Any, list[float]] = {v: [] for v in variants}
        for r in range(self.rounds + 1):
            for v, calls in variants.items():
                t0 = time.perf_counter()
                for fn, args in calls:
                    fn(*args)
                if r:
                    times[v].append(time.perf_counter() - t0)
        return {v: min(t) for v, t in times.items()}

    def crossover(self, key: str, allowed: Sequence[int]) -> tuple[int, dict[str, Any]]:
        """The judged `large_from` of a Linear kernel and what it was judged on."""
        idx = set(self.steps_of(key))
        lib = self.ex.ffi_library

        def pick(large: bool) -> Callable[[int, Step], Any]:
            return lambda i, st: lib[st.large if large else st.kernel] if i in idx and st.large else None
        variants = {(b, large): self.bound(b, pick(large)) for b in allowed for large in (False, True)}
        t = self.fastest(variants)
        value = min((n for n in allowed if all(t[b, True] < t[b, False] for b in allowed if b >= n)),
                    default=max(allowed))
        return value, {"seqs": list(allowed), "gemv_s": [t[b, False] for b in allowed],
                       "gemm_s": [t[b, True] for b in allowed]}

    def splits(self, req: LowerRequest, kind: str, target: dict[str, Any], knobs: dict[str, Any],
               allowed: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
        """The judged `key_splits` of an attention kernel (other knobs as given) and what it was judged on."""
        kernels = [lower(req, kind, {**knobs, "key_splits": v}) for v in allowed]
        module = build_module(module_funcs(kernels), target)
        idx = set(self.steps_of(req.key()))

        def pick(j: int, seqs: int) -> Callable[[int, Step], Any]:
            def swap(i: int, st: Step) -> Any:
                stage = int(st.kernel.rsplit("_", 1)[1])
                return module[f"c{j}_{stage}{variant(stages(kernels[j])[stage], seqs)}"] if i in idx else None
            return swap
        t = self.fastest({(j, b): self.bound(b, pick(j, b)) for j in range(len(allowed)) for b in SPLIT_SEQS})
        per_token = [sum(t[j, b] / b for b in SPLIT_SEQS) for j in range(len(allowed))]
        current = allowed.index(knobs["key_splits"])
        best = min(range(len(allowed)), key=per_token.__getitem__)
        chosen = best if per_token[best] < per_token[current] * (1 - MARGIN) else current
        return allowed[chosen], {"seqs": list(SPLIT_SEQS), "values": list(allowed), "per_token_s": per_token}

