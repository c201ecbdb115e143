"""`graphllm tune`: search a model's distinct kernels' knobs, judge the step-level ones in context, compare.

Phases, each resumable (the database is written after every kernel and after each phase):
1. every distinct kernel request with knobs (largest weights first) gets a coordinate-descent search in
   isolation (search.py / measure.py) within its share of the budget; a kernel already in the database for
   this identity is not measured again;
2. the step-level knobs (context.py) are judged in the compiled model built with the phase-1 knobs;
3. default and tuned builds are compared with tools/bench.run_bench in alternating rounds.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...codegen.knobs import defaults
from ...codegen.lower import LowerRequest, knobs_of
from ...codegen.tuning import TuningDB, identity, kernel_requests, kernel_signature
from ...codegen.tuning_paths import default_db_dir
from ...errors import GraphLLMError
from ...pipeline import GraphOptions, build
from ...runtime.builds import host_target
from ...runtime.llm import LLM
from ...runtime.tvm import configure_threads
from ..bench import run_bench
from .context import SPLIT_SEQS, StepBench
from .measure import KernelBench, Workload, describe
from .search import STEP_KNOBS, search

KERNEL_SHARE = 0.6  # of a time budget, for the isolated searches (the rest: building, step knobs, comparison)


@dataclass
class TuneOptions:
    """What to tune and how long."""

    model: str | None = None
    dtype: str | None = None
    kv_dtype: str | None = None  # the KV cache's element type (None: the pipeline's default)
    threads: int | None = None
    db: Path = field(default_factory=default_db_dir)
    budget_s: float | None = None
    trials: int | None = None
    rounds: int = 7
    step_rounds: int = 5
    compare_rounds: int = 3
    show_progress: bool = True


def tune_model(o: TuneOptions, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Run the three phases for one model; return the identity used and what each phase did."""
    start = time.monotonic()
    threads = configure_threads(o.threads)
    target = host_target()
    ident = identity(target, threads)
    db = TuningDB.load(o.db)
    graph = build(o.model, GraphOptions(dtype=o.dtype, kv_dtype=o.kv_dtype), need_model=False).graph
    model = str(o.model or "default")
    todo = _tunable(graph)
    measured = []
    kernel_deadline = start + o.budget_s * KERNEL_SHARE if o.budget_s else float("inf")
    bar = _bar(len(todo), o.show_progress)
    for k, (req, count) in enumerate(todo):
        sig = kernel_signature(req, "cpu")
        bar.set_description_str(f"kernel {k + 1}/{len(todo)} {req.op}")
        if db.kernel(ident, sig) is not None:
            bar.update(1)
            continue
        share = (kernel_deadline - time.monotonic()) / (len(todo) - k)
        bench = KernelBench(req, "cpu", target, threads, rounds=o.rounds)
        try:
            result = search(bench, knobs_of(req, "cpu"), time.monotonic() + share, o.trials,
                            lambda n, best, dflt: bar.set_postfix_str(f"candidate {n}, best {best * 1e6:.1f} us "
                                                                      f"(default {dflt * 1e6:.1f} us)"))
        except GraphLLMError as e:
            log(f"warning: {e}")
            bar.update(1)
            continue
        db.put_kernel({"identity": ident, "kernel": sig, "op": req.op, "shape": describe(req), "nodes": count,
                       "knobs": result.knobs, "judged": {n: "kernel" for n in result.knobs if n not in STEP_KNOBS},
                       "default_s": result.default_s, "tuned_s": result.tuned_s, "candidates": result.candidates,
                       "rejected": result.rejected, "model": model})
        db.save()
        measured.append(sig)
        bar.update(1)
    bar.close()
    log(f"kernels: {len(measured)} measured, {len(todo) - len(measured)} already in {db.path}")
    judged = _step_phase(o, db, ident, target, todo) if o.step_rounds else []
    compared = _compare(o, db, ident, model) if o.compare_rounds else None
    return {"identity": ident, "model": model, "measured": measured, "judged": judged, "compared": compared, "db": str(db.path)}


def _tunable(graph: Any) -> list[tuple[LowerRequest, int]]:
    """The graph's distinct kernel requests that have knobs, the most weight bytes (times uses) first."""
    found = []
    for req, count in kernel_requests(graph).values():
        try:
            if knobs_of(req, "cpu"):
                found.append((req, count))
        except NotImplementedError:
            continue
    fixed = lambda req: sum(math.prod(t.shape) for _, t in req.inputs if all(isinstance(d, int) for d in t.shape))
    return sorted(found, key=lambda rc: -fixed(rc[0]) * rc[1])


def _step_phase(o: TuneOptions, db: TuningDB, ident: dict[str, Any], target: dict[str, Any],
                todo: list[tuple[LowerRequest, int]]) -> list[str]:
    """Judge large_from and key_splits of every kernel whose record has not had them judged in context."""
    pending = []
    for req, _ in todo:
        record = db.kernel(ident, kernel_signature(req, "cpu"))
        names = {k.name: k for k in knobs_of(req, "cpu")}
        pending += [(req, record, names[n]) for n in sorted(STEP_KNOBS & set(names))
                    if record is not None and record["judged"].get(n) != "step"]
    if not pending:
        return []
    seqs = max([*SPLIT_SEQS, *(max(k.values) for _, _, k in pending if k.name == "large_from")])
    workload = Workload()
    llm = LLM.load(o.model, dtype=o.dtype, kv_dtype=o.kv_dtype, threads=o.threads, tuned=o.db, num_slots=seqs,
                   max_seqs=seqs, max_context=workload.context)
    steps = StepBench(llm, seqs, o.step_rounds, workload)
    judged = []
    for req, record, knob in _progress_items(pending, "step knobs", o.show_progress):
        if knob.name == "large_from":
            value, seen = steps.crossover(req.key(), knob.values)
        else:
            value, seen = steps.splits(req, "cpu", target, {**defaults(knobs_of(req, "cpu")), **record["knobs"]},
                                       knob.values)
        record["knobs"][knob.name] = value
        record["judged"][knob.name] = "step"
        record.setdefault("step", {})[knob.name] = seen
        db.put_kernel(record)
        db.save()
        judged.append(f"{req.key()}.{knob.name}={value}")
    return judged


def _compare(o: TuneOptions, db: TuningDB, ident: dict[str, Any], model: str) -> dict[str, Any]:
    """Decode and prefill of the default and the tuned build, alternating rounds of run_bench; medians."""
    load = dict(dtype=o.dtype, kv_dtype=o.kv_dtype, threads=o.threads, max_context=2 * Workload().prompt + 1)
    llms = {"default": LLM.load(o.model, tuned=False, **load), "tuned": LLM.load(o.model, tuned=o.db, **load)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in llms}
    for _ in _progress_items(range(o.compare_rounds), "default vs tuned", o.show_progress):
        for name, llm in llms.items():
            runs[name].append(run_bench(llm, Workload().prompt, Workload().prompt, repeat=1))
    fields = ("prefill_tok_s", "decode_tok_s", "decode_gb_s", "copy_gb_s")
    medians = {name: {f: statistics.median(r[f] for r in rs) for f in fields} for name, rs in runs.items()}
    for m in medians.values():  # bench's share: weight bytes per second over copy bandwidth (read + write)
        m["bandwidth_share"] = m["decode_gb_s"] / m["copy_gb_s"]
    record = {"identity": ident, "model": model, "dtype": o.dtype or "as stored", "rounds": o.compare_rounds,
              "tuned_note": next((n for n in llms["tuned"].notes if n.startswith("using tuned knobs")), ""),
              **medians}
    db.put_model(record)
    db.save()
    return record


def _bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr (disabled: a silent one)."""
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, disable=not enabled, leave=False)


def _progress_items(items: Any, what: str, enabled: bool) -> Any:
    """Iterate with a tqdm bar named `what`."""
    from tqdm import tqdm

    return tqdm(items, desc=what, file=sys.stderr, disable=not enabled, leave=False)
