"""Measure one kernel's knob candidates in isolation: one TVM build per batch, checked against the numpy reference.

The workload is a 128-token prefill plus decode steps at position 192 (the middle of a 128 + 128 generation):
a candidate's score is time(T = 1) + time(T = prompt) / prompt, seconds per generated-or-prompt token.
Weights (and KV caches) are cold: every call reads the next of enough copies to exceed `cold_bytes`, as a
decode step reads each layer's weights from DRAM. Candidates are timed one at a time in interleaved rounds,
after their outputs at both token counts are checked against the op's reference; a candidate's time is its
fastest round (the host is shared: another process's work only ever adds time, and medians of one
kernel call under contention ran 2-100x the quiet time, graphllm/codegen/NOTES.md "Contention").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...codegen.build import build_module
from ...codegen.lower import Kernel, LowerRequest, lower
from ...dsl.ops import RefContext, get_spec, kv_dtype
from ...dsl.qformats import dequantize, random_blocks
from ...dsl.types import SEQS, TOKENS
from ...layouts import aligned_empty, get_packer
from ...runtime.tvm import as_tensor

COLD_BYTES = 96 << 20  # weights rotated through more than any L3 cache of these machines
MAX_COPIES = 256
TOLERANCE = 1e-3  # relative to the reference's largest magnitude (float32 sums in another order)


@dataclass(frozen=True)
class Workload:
    """The token counts and positions a kernel is measured at."""

    prompt: int = 128  # prefill tokens (positions 0 .. prompt-1)
    position: int = 192  # the decode step's position
    context: int = 256  # KV cache positions

    def steps(self) -> tuple[tuple[int, int], ...]:
        """(tokens, first position) of the measured steps: one decode step and one prefill."""
        return (1, self.position), (self.prompt, 0)


Calls = list[tuple[Callable[..., Any], tuple[Any, ...]]]


class KernelBench:
    """One kernel request's inputs (cold copies), references, and the timing of knob candidates."""

    def __init__(self, req: LowerRequest, kind: str, target: dict[str, Any], threads: int,
                 workload: Workload = Workload(), rounds: int = 7, cold_bytes: int = COLD_BYTES, seed: int = 0) -> None:
        self.req, self.kind, self.target, self.threads = req, kind, target, threads
        self.workload, self.rounds = workload, rounds
        self.kernel = lower(req, kind)
        self._module: Any = None
        rng = np.random.default_rng(seed)
        self.kv = get_spec(req.op).kv_shape(dict(req.inputs), dict(req.attrs)) if get_spec(req.op).kv_shape else None
        shared, ref_shared = self._fixed_arrays(rng)
        size = sum(a.nbytes for a in shared.values())
        copies = max(1, min(MAX_COPIES, -(-cold_bytes // max(size, 1))))
        self.copies = [shared] + [{p: _aligned_copy(a) for p, a in shared.items()} for _ in range(copies - 1)]
        self.pristine = {p: shared[p].copy() for p in ("kcache", "vcache") if p in shared}  # checks start from these
        self.cases = [self._case(tokens, first, rng, ref_shared) for tokens, first in workload.steps()]

    def _fixed_arrays(self, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The arrays that do not depend on the token count (weights, tables, KV caches): the kernel's, the reference's."""
        kernel: dict[str, np.ndarray] = {}
        ref: dict[str, np.ndarray] = {}
        for port, t in self.req.inputs:
            if any(isinstance(d, str) for d in t.shape):
                continue
            if t.quantized:
                raw = random_blocks(t.shape, t.dtype, rng)
                kernel[port], ref[port] = get_packer(self.kernel.packs[port])(raw), dequantize(raw, t.dtype, t.shape)
                continue
            ref[port] = _random(t.shape, t.dtype, rng)
            kernel[port] = get_packer(self.kernel.packs[port])(ref[port]) if port in self.kernel.packs else ref[port]
        if self.kv is not None:
            shape = (1, self.workload.context, *self.kv)
            dtype = kv_dtype(dict(self.req.attrs))
            kernel["kcache"], kernel["vcache"] = _random(shape, dtype, rng), _random(shape, dtype, rng)
        return kernel, ref

    def _case(self, tokens: int, first: int, rng: np.random.Generator,
              ref_shared: dict[str, np.ndarray]) -> dict[str, Any]:
        """One measured step: per-step arrays, the reference output, and the tensors of every cold copy."""
        positions = np.arange(first, first + tokens, dtype=np.int32)
        step: dict[str, np.ndarray] = {"positions": positions, "slots": np.zeros(tokens, np.int32),
                                       "last_rows": np.array([tokens - 1], np.int32),
                                       "threads": np.array([self.threads], np.int32)}
        ref_inputs = dict(ref_shared)
        for port, t in self.req.inputs:
            if port in ref_shared:
                continue
            shape = t.concrete({TOKENS: tokens, SEQS: 1})
            if t.dtype == "int32":
                values = {"seqLens": [tokens], "positionIds": positions}.get(port, 0)
                step[port] = ref_inputs[port] = _filled(shape, t.dtype, values)
            else:
                step[port] = ref_inputs[port] = _random(shape, t.dtype, rng)
        step = {p: _aligned_copy(a) for p, a in step.items()}
        attrs, ctx = dict(self.req.attrs), RefContext(slots=np.array([0]), positions=positions)
        if self.kv is not None:
            attrs["layer"] = 0
            ctx.caches = {0: (self.copies[0]["kcache"].copy(), self.copies[0]["vcache"].copy())}
        expect = get_spec(self.req.op).reference(ref_inputs, attrs, ctx)
        out = aligned_empty(expect.shape, expect.dtype)
        tensors = [{p: as_tensor(a) for p, a in {**step, **copy, "out": out}.items()} for copy in self.copies]
        return {"tokens": tokens, "expect": expect, "out": out, "tensors": tensors}

    def build(self, candidates: Sequence[dict[str, Any]]) -> list[Kernel]:
        """Lower every candidate's knob values (one module build for all): the kernels, with their functions bound."""
        kernels = [lower(self.req, self.kind, knobs) for knobs in candidates]
        self._module = build_module(module_funcs(kernels), self.target)
        return kernels

    def calls(self, index: int, kernel: Kernel, case: dict[str, Any], copy: int) -> Calls:
        """The kernel calls of candidate `index` for one step on one cold copy (as Step.symbol picks variants)."""
        out = []
        for s, stage in enumerate(stages(kernel)):
            fn = self._module[f"c{index}_{s}{variant(stage, case['tokens'])}"]
            out.append((fn, tuple(case["tensors"][copy][p] for p in stage.params)))
        return out

    def correct(self, index: int, kernel: Kernel) -> bool:
        """Whether the candidate's output equals the reference at every measured step (finite, within TOLERANCE)."""
        for case in self.cases:
            for p, a in self.pristine.items():
                self.copies[0][p][...] = a
            case["out"][...] = np.nan
            _run(self.calls(index, kernel, case, 0))
            expect, out = case["expect"], case["out"]
            bound = TOLERANCE * max(float(np.abs(expect).max()), 1e-30)
            if not np.isfinite(out).all() or float(np.abs(out - expect).max()) > bound:
                return False
        return True

    def measure(self, candidates: Sequence[dict[str, Any]]) -> list[float | None]:
        """Each candidate's score (seconds per token of the workload), None for a wrong one; one build for all."""
        kernels = self.build(candidates)
        ok = [i for i, k in enumerate(kernels) if self.correct(i, k)]
        times: dict[tuple[int, int], list[float]] = {(i, c): [] for i in ok for c in range(len(self.cases))}
        copy = 0
        for r in range(self.rounds + 1):  # round 0 warms up (page faults, pool start) and is dropped
            for i in ok[r % len(ok):] + ok[:r % len(ok)] if ok else []:
                for c, case in enumerate(self.cases):
                    calls = self.calls(i, kernels[i], case, copy)
                    copy = (copy + 1) % len(self.copies)
                    t0 = time.perf_counter()
                    _run(calls)
                    if r:
                        times[i, c].append(time.perf_counter() - t0)
        return [sum(min(times[i, c]) / case["tokens"] for c, case in enumerate(self.cases))
                if i in ok else None for i in range(len(candidates))]


def stages(kernel: Kernel) -> tuple[Kernel, ...]:
    """The kernels one node runs, in order."""
    return (*kernel.before, kernel)


def variant(stage: Kernel, tokens: int) -> str:
    """The function suffix a plan step picks for this many tokens (as Step.symbol does)."""
    return "_large" if stage.large is not None and tokens >= stage.large_from else ""


def module_funcs(kernels: Sequence[Kernel]) -> dict[str, Any]:
    """{c<candidate>_<stage><variant>: PrimFunc} of candidate kernels, to build into one module."""
    return {f"c{i}_{s}{suffix}": func for i, k in enumerate(kernels) for s, stage in enumerate(stages(k))
            for suffix, func in stage.variants().items()}


def _run(calls: Calls) -> None:
    for fn, args in calls:
        fn(*args)


def _random(shape: Sequence[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """An aligned array of standard-normal values."""
    return _filled(shape, dtype, rng.standard_normal(tuple(shape)))


def _filled(shape: Sequence[int], dtype: str, values: Any) -> np.ndarray:
    a = aligned_empty(tuple(shape), dtype)
    a[...] = values
    return a


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    return _filled(a.shape, str(a.dtype), a)


def describe(req: LowerRequest) -> str:
    """A request's shapes in one line: `FusedLinear input f32[T,576] weight q4_1[960,576] ...`."""
    return " ".join([req.op, *(f"{p} {t}" for p, t in req.inputs)])
