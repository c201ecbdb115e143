"""`graphllm check`: run a custom model file next to a reference on one prompt and find where they part.

The reference is graphllm's built-in description of the same architecture (default) or Hugging Face
transformers. Both graphs run on the reference executor, unoptimised (only verify), so every value
is one op of one file:line.

Matching the values of two graphs (against the built-in description):
- Stages: every op belongs to "embeddings" (before the first layer), "layer i" (it reads a weight
  whose name holds the number i, e.g. model.layers.3.mlp.up_proj.weight, or it is the attention of
  cache i; other ops inherit the latest stage of their inputs) or "head" (it reads a weight that is
  not per layer, after the layers). Stages are found the same way in both graphs.
- Names: a value is keyed by (stage, data name, how many times that name was written before in that
  stage). fastllm-style files reuse the built-in names (hiddenStates, attenInput, q, ...); a name the
  reference never writes is mapped to the reference name most often written by an op of the same
  type reading the same checkpoint weights (the weight names are shared by both graphs).
- Walk: the custom values are compared in the custom file's execution order. A value whose key
  differs from the reference beyond the tolerance is still accepted when it equals another write of
  the same name in that stage (the same value reached in another order, e.g. Swiglu instead of
  Silu + MulTo); otherwise it is the first divergence: its file:line is reported with what differs
  from the reference's op (op type, attributes, weights, which value each input port reads).
  Values without a counterpart are not compared.

Against transformers (float32; a GGUF dequantized by transformers), each stage's last [tokens, hidden]
value is compared with transformers' ``output_hidden_states`` (the last one, which transformers
normalizes, with the head's normalized last-token state), then the logits.

Judging a value: max |diff| / max |reference| <= rtol and cosine similarity >= 1 - rtol (or, with an
absolute tol, max |diff| <= tol). Float32 values of a correct file stay below 3e-6 relative against
transformers (every tiny fixture, the real SmolLM2-135M over 30 layers where |x| reaches ~22,000),
while the broken files of the tests are 3e-3 (eps 1e-2 for 1e-5) to 1.7: the default rtol 1e-4 sits
about 30x from both.

Steps: after the prompt, ``tokens`` decode steps are fed the reference's greedy token (both models see
the same tokens and positions), so a cache or position bug that only shows in decode is found at its
op (builtin) or layer (transformers), and each step's logits give top-1/top-5 agreement and KL. With a
quantizing dtype the reference keeps float32 weights and only the KL decides.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..dsl import ops as O
from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph
from ..dsl.reference import ReferenceExecutor
from ..errors import GraphLLMError, ModelLoadError
from ..io.loader import load_model
from ..pipeline import GraphOptions, build, weight_source

DEFAULT_PROMPT = "The capital of France is"
EMBEDDINGS, HEAD = (0, 0), (2, 0)
_LAYER_NUMBER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
Stage = tuple[int, int]
Key = tuple[Stage, str, int]


def stage_name(stage: Stage) -> str:
    """'embeddings', 'layer 3' or 'head'."""
    return {0: "embeddings", 2: "head"}.get(stage[0], f"layer {stage[1]}")


def stages(graph: Graph) -> dict[str, Stage]:
    """The stage of every op node (see the module doc)."""
    out: dict[str, Stage] = {}
    for n in graph.order():
        d = graph[n]
        if d["op"] in (INPUT_OP, WEIGHT_OP):
            continue
        srcs = list(graph.inputs(n).values())
        weights = [graph[s]["name"] for s in srcs if graph[s]["op"] == WEIGHT_OP]
        own = [int(m.group(1)) for m in map(_LAYER_NUMBER.search, weights) if m]
        if "layer" in d["attrs"]:  # an attention op: its KV cache is the layer's
            own.append(int(d["attrs"]["layer"]))
        upstream = max((out[s] for s in srcs if s in out), default=EMBEDDINGS)
        if own:
            out[n] = (1, max(own))
        elif weights and upstream[0] >= 1:
            out[n] = HEAD
        else:
            out[n] = upstream
        out[n] = max(out[n], upstream)
    return out


def _weights_of(graph: Graph, node: str) -> dict[str, str]:
    """Port -> checkpoint weight name of a node's weight inputs."""
    return {p: graph[s]["name"] for p, s in graph.inputs(node).items() if graph[s]["op"] == WEIGHT_OP}


def rename_map(custom: Graph, reference: Graph) -> dict[str, str]:
    """Custom data names the reference never writes -> the reference name their weight-reading ops write."""
    ref_names = {reference[n]["name"] for n in reference.order() if reference[n]["op"] not in (INPUT_OP, WEIGHT_OP)}
    anchors: dict[tuple[str, frozenset], Counter] = defaultdict(Counter)
    for n in reference.order():
        w = _weights_of(reference, n)
        if w and reference[n]["name"]:
            anchors[(reference[n]["op"], frozenset(w.items()))][reference[n]["name"]] += 1
    votes: dict[str, Counter] = defaultdict(Counter)
    for n in custom.order():
        name, w = custom[n]["name"], _weights_of(custom, n)
        if name and name not in ref_names and w:
            votes[name].update(anchors.get((custom[n]["op"], frozenset(w.items())), Counter()))
    return {name: c.most_common(1)[0][0] for name, c in votes.items() if c}


def value_keys(graph: Graph, stage: dict[str, Stage], rename: dict[str, str] | None = None) -> dict[str, Key]:
    """(stage, data name, occurrence in that stage) of every named op value."""
    counts: Counter = Counter()
    keys = {}
    for n in graph.order():
        if n in stage and graph[n]["name"]:
            name = (rename or {}).get(graph[n]["name"], graph[n]["name"])
            keys[n] = (stage[n], name, counts[(stage[n], name)])
            counts[(stage[n], name)] += 1
    return keys


DEFAULT_RTOL = 1e-4
DEFAULT_MAX_KL = 0.1
QUANT_FREE = (None, "float32")  # --dtype values that keep the checkpoint's (dequantized) weights


@dataclass(frozen=True)
class Diff:
    """How far a value is from its reference: max |diff|, that over max |reference|, cosine similarity."""

    abs: float = 0.0
    rel: float = 0.0
    cos: float = 1.0

    @classmethod
    def of(cls, value: np.ndarray, ref: np.ndarray) -> Diff:
        """The difference of two arrays in float64 (infinite for different shapes)."""
        if value.shape != ref.shape:
            return cls(float("inf"), float("inf"), 0.0)
        a, b = value.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if diff == 0:
            return cls()
        scale = float(np.max(np.abs(b)))
        rel = diff / scale if scale else float("inf")
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cos = float(a @ b / (na * nb)) if na and nb else float(na == nb)
        return cls(diff, rel, cos)

    def worst(self, other: Diff) -> Diff:
        """The larger differences and the smaller cosine of the two."""
        return Diff(max(self.abs, other.abs), max(self.rel, other.rel), min(self.cos, other.cos))

    def __str__(self) -> str:
        return f"max |diff| {self.abs:.3g}, relative {self.rel:.3g}, cosine {self.cos:.7f}"


@dataclass(frozen=True)
class Tolerance:
    """When a value matches: relative error <= rtol and cosine >= 1 - rtol, or |diff| <= tol when tol is set."""

    rtol: float = DEFAULT_RTOL
    tol: float | None = None

    def accepts(self, d: Diff) -> bool:
        """Whether a difference is within the tolerance."""
        if self.tol is not None:
            return d.abs <= self.tol
        return d.rel <= self.rtol and d.cos >= 1 - self.rtol

    def __str__(self) -> str:
        if self.tol is not None:
            return f"absolute {self.tol:g}"
        return f"relative {self.rtol:g}, cosine >= {1 - self.rtol:g}"


@dataclass
class StageStats:
    """How many values of one stage were compared and their worst difference."""

    compared: int = 0
    worst: Diff = field(default_factory=Diff)

    def add(self, d: Diff) -> None:
        """Count one compared value."""
        self.compared += 1
        self.worst = self.worst.worst(d)


@dataclass
class Divergence:
    """The first custom value that differs from its reference counterpart beyond the tolerance."""

    where: str
    stage: Stage
    diff: Diff
    details: list[str]
    step: int = 0  # 0: the prompt; k: the k-th decode step


@dataclass
class Step:
    """The next-token logits of one step (the prompt, then each decode step fed the reference's token)."""

    token: int  # the reference's greedy token
    custom_token: int  # the custom model's
    top5: float  # overlap of the two top-5 sets
    kl: float  # KL(reference || custom) of the softmaxes
    logits: Diff

    @classmethod
    def of(cls, got: np.ndarray, want: np.ndarray) -> Step:
        """Compare the custom logits with the reference's."""
        top = set(np.argsort(-want)[:5].tolist()) & set(np.argsort(-got)[:5].tolist())
        logp, logq = _log_softmax(want), _log_softmax(got)
        kl = float(np.sum(np.exp(logp) * (logp - logq)))
        return cls(int(np.argmax(want)), int(np.argmax(got)), len(top) / 5, max(kl, 0.0), Diff.of(got, want))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax in float64."""
    x = x.astype(np.float64) - np.max(x)
    return x - np.log(np.sum(np.exp(x)))


@dataclass
class CheckReport:
    """The outcome of one check: per-stage statistics, the first divergence (if any), the logits of every step.

    A quantized run (``judged`` False) is not judged on its values: its verdict is the KL of every step.
    """

    against: str
    tolerance: Tolerance = field(default_factory=Tolerance)
    judged: bool = True
    max_kl: float = DEFAULT_MAX_KL
    stats: dict[Stage, StageStats] = field(default_factory=dict)
    divergence: Divergence | None = None
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No divergence, every step ran and its logits (judged) or KL (quantized) agree."""
        if self.divergence is not None or not self.steps:
            return False
        if not self.judged:
            return all(s.kl <= self.max_kl for s in self.steps)
        return all(self.tolerance.accepts(s.logits) and s.token == s.custom_token for s in self.steps)

    def lines(self) -> list[str]:
        """The report as printed."""
        out = [f"note: {n}" for n in self.notes]
        if not self.judged:
            out.append(f"note: quantized weights: values are shown, not judged; the verdict is each step's KL "
                       f"(at most {self.max_kl:g})")
        for stage, s in self.stats.items():
            mark = "  <- diverges" if self.divergence and self.divergence.stage == stage else ""
            what = f"{s.compared} value{'s' if s.compared != 1 else ''}" if self.against == "builtin" else "output"
            out.append(f"{stage_name(stage):>12}: {what}, {s.worst}{mark}")
        if self.divergence:
            d = self.divergence
            when = f" at decode step {d.step}" if d.step else ""
            out.append(f"first divergence beyond {self.tolerance}{when}: {d.where}: {d.diff}")
            out += [f"  {line}" for line in d.details]
        if self.steps:
            out.append(f"logits: {self.steps[0].logits}")
            out.append(self._tokens_line())
        if not self.divergence and self.steps:
            verdict = "matches" if self.ok else "differs from"
            rule = self.tolerance if self.judged else f"KL at most {self.max_kl:g}"
            out.append(f"the custom model {verdict} the {self.against} reference ({rule})")
        return out

    def _tokens_line(self) -> str:
        """Greedy tokens, top-1/top-5 agreement and KL over the steps."""
        n = len(self.steps)
        same = [s.token == s.custom_token for s in self.steps]
        first = f", first differs at generated token {same.index(False)}" if not all(same) else ""
        kls = [s.kl for s in self.steps]
        what = "the next token" if n == 1 else (f"{n} tokens (the prompt's next, then {n - 1} decode "
                                                f"step{'s' if n > 2 else ''} fed the reference's tokens)")
        return (f"tokens: {what}: top-1 agrees {sum(same)}/{n}{first}; top-5 overlap "
                f"{np.mean([s.top5 for s in self.steps]):.2f}; KL max {max(kls):.3g}, mean {np.mean(kls):.3g}")


class _Stop(Exception):
    """Ends a run at the first divergence."""


def _describe(graph: Graph, node: str) -> str:
    """A value for the report: "data['q'] from ExpandHead (file.py:12)" or "input data['sin']"."""
    d = graph[node]
    if d["op"] == INPUT_OP:
        return f"input data[{d['name']!r}]"
    return f"data[{d['name']!r}] from {d['op']}" + (f" ({d['loc']})" if d["loc"] else "")


def explain(custom: Graph, node: str, reference: Graph, ref_node: str, keys: dict[str, Key],
            ref_keys: dict[str, Key]) -> list[str]:
    """What differs between a custom op and its reference counterpart: op, attributes, weights, inputs."""
    c, r = custom[node], reference[ref_node]
    lines = [f"reference: {reference.where(ref_node)}"]
    if c["op"] != r["op"]:
        lines.append(f"op: {c['op']} here, {r['op']} in the reference")
    else:
        attrs = sorted(k for k in set(c["attrs"]) | set(r["attrs"]) if c["attrs"].get(k) != r["attrs"].get(k))
        lines += [f"{k}={c['attrs'].get(k)!r} here, {r['attrs'].get(k)!r} in the reference" for k in attrs]
    cw, rw = _weights_of(custom, node), _weights_of(reference, ref_node)
    lines += [f"port {p!r} reads weight {cw.get(p)!r} here, {rw.get(p)!r} in the reference"
              for p in sorted(set(cw) | set(rw)) if cw.get(p) != rw.get(p)]
    cin, rin = custom.inputs(node), reference.inputs(ref_node)
    for port in [p for p in {**cin, **rin} if p not in cw and p not in rw]:
        cs, rs = cin.get(port), rin.get(port)
        same = (cs is not None and rs is not None
                and (keys.get(cs, custom[cs]["name"]) == ref_keys.get(rs, reference[rs]["name"])))
        if not same:
            here = _describe(custom, cs) if cs else "nothing"
            there = _describe(reference, rs) if rs else "nothing"
            lines.append(f"port {port!r} reads {here} here; the reference reads {there}")
    return lines


StepRunner = Callable[[list[int], range, int], tuple[np.ndarray, np.ndarray]]


def run_steps(report: CheckReport, custom: Graph, ids: list[int], tokens: int, step: StepRunner) -> CheckReport:
    """The prompt, then ``tokens`` decode steps fed the reference's greedy tokens; stops at a divergence.

    ``step(token ids, positions, step number)`` runs both models on one step and returns the custom and the
    reference next-token logits ([vocab] each); it raises _Stop once it has recorded a divergence.
    """
    feed, start = list(ids), 0
    try:
        for k in range(tokens + 1):
            got, want = step(feed, range(start, start + len(feed)), k)
            report.steps.append(Step.of(got, want))
            if report.judged and not report.tolerance.accepts(report.steps[-1].logits):
                out = custom.outputs["logits"]
                report.divergence = Divergence(custom.where(out), stages(custom)[out], report.steps[-1].logits, [
                    "no value before the logits differs from the reference's: the values computed differently "
                    "have no counterpart there", _worst(got, want)], k)
                break
            start, feed = start + len(feed), [report.steps[-1].token]
    except _Stop:
        pass
    except O.OpExit:
        report.notes.append("the custom file's Exit op stopped the run: compared the values before it")
    return report


class _BuiltinWalk:
    """Compares each custom value with its counterpart in the built-in graph, step by step (see the module doc)."""

    def __init__(self, custom: Graph, reference: Graph, weights: Callable[[Graph], Any], report: CheckReport):
        self.custom, self.reference, self.report = custom, reference, report
        self.keys = value_keys(custom, stages(custom), rename_map(custom, reference))
        self.ref_keys = value_keys(reference, stages(reference))
        self.by_key = {k: n for n, k in self.ref_keys.items()}
        self.by_name: dict[tuple[Stage, str], list[str]] = defaultdict(list)
        for n, (stage, name, _) in self.ref_keys.items():
            self.by_name[(stage, name)].append(n)
        self.ref_values: dict[str, np.ndarray] = {}
        self.executors = _executor(custom, weights), _executor(reference, weights)
        self.step_no = 0

    def step(self, feed: list[int], positions: range, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the reference, then the custom graph, comparing as it goes."""
        self.ref_values.clear()
        self.step_no = k
        args = (feed, positions, [len(feed)], [0])
        want = self.executors[1].run(*args, observe=self.ref_values.__setitem__)
        got = self.executors[0].run(*args, observe=self.observe)
        return got[0], want[0]

    def _accepts(self, value: np.ndarray, ref_node: str) -> bool:
        """Whether a custom value equals a reference value within the tolerance."""
        return self.report.tolerance.accepts(Diff.of(value, self.ref_values[ref_node]))

    def observe(self, node: str, value: np.ndarray) -> None:
        """Compare one custom value with its counterpart; stop at the first divergence."""
        key = self.keys.get(node)
        target = self.by_key.get(key) if key else None
        others = [n for n in self.by_name.get(key[:2], []) if n != target] if key else []
        if target is None and not others:
            return
        stats = self.report.stats.setdefault(key[0], StageStats())
        diff = Diff.of(value, self.ref_values[target or others[0]])
        if not self.report.judged or self.report.tolerance.accepts(diff):
            stats.add(diff)
            return
        same = [Diff.of(value, self.ref_values[n]) for n in others if self._accepts(value, n)]
        if same:  # the same value under another occurrence of the name
            stats.add(min(same, key=lambda d: d.abs))
            return
        stats.add(diff)
        self.diverge(node, key, target, others, value)

    def diverge(self, node: str, key: Key, target: str | None, others: list[str], value: np.ndarray) -> None:
        """Record the divergence of one custom value, with what differs from the reference's op."""
        expected = self.ref_values[target or others[0]]
        if expected.shape != value.shape:
            detail = f"shape {list(value.shape)} here, {list(expected.shape)} in the reference"
        else:
            detail = _worst(value, expected)
        if target is None:
            times = "once" if len(others) == 1 else f"{len(others)} times"
            details = [f"the reference writes data[{key[1]!r}] {times} in {stage_name(key[0])}; "
                       f"this extra write equals none of those values"]
        else:
            details = explain(self.custom, node, self.reference, target, self.keys, self.ref_keys)
        equal = [n for n, k in self.ref_keys.items() if k[0] == key[0] and n in self.ref_values
                 and self._accepts(value, n)]
        if equal:
            details.append(f"its value equals the reference's {_describe(self.reference, equal[0])}"
                           + (": is it written to the wrong name (swapped ports)?" if target is None else ""))
        self.report.divergence = Divergence(self.custom.where(node), key[0], Diff.of(value, expected),
                                            details + [detail] + _decode_hints(self.custom, self.step_no), self.step_no)
        raise _Stop


def compare_builtin(custom: Graph, reference: Graph, weights: Callable[[Graph], Any], ids: list[int],
                    report: CheckReport, tokens: int = 0) -> CheckReport:
    """Run both graphs on the prompt (and decode steps) and walk the custom values in order (see the module doc)."""
    return run_steps(report, custom, ids, tokens, _BuiltinWalk(custom, reference, weights, report).step)


def _worst(a: np.ndarray, b: np.ndarray) -> str:
    """Where two same-shaped arrays differ most."""
    i = np.unravel_index(int(np.argmax(np.abs(a.astype(np.float64) - b))), a.shape)
    return f"at index {list(map(int, i))}: {float(a[i]):.6g} here, {float(b[i]):.6g} in the reference"


def _executor(graph: Graph, weights: Callable[[Graph], Any]) -> ReferenceExecutor:
    """A one-slot reference executor for the graph."""
    return ReferenceExecutor(graph, weights(graph), max_context=int(graph.config["max_positions"]))


def compare_transformers(custom: Graph, weights: Callable[[Graph], Any], ids: list[int],
                         reference: Callable[[list[int]], tuple[list[np.ndarray], np.ndarray]],
                         report: CheckReport, tokens: int = 0) -> CheckReport:
    """Compare each stage's output hidden state and the logits with transformers', step by step (see the module doc).

    ``reference(token ids)`` runs transformers on the next tokens (keeping its cache) and returns its hidden
    states ([tokens, hidden] each) and last-token logits.
    """
    stage = stages(custom)
    executor = _executor(custom, weights)
    last: dict[Stage, tuple[str, np.ndarray]] = {}

    def step(feed: list[int], positions: range, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Run both on one step; compare the stages' outputs."""
        hidden, want = reference(feed)
        width = hidden[0].shape[-1]
        last.clear()

        def keep(node: str, value: np.ndarray) -> None:
            """Keep each stage's latest [tokens, hidden] value."""
            if value.ndim == 2 and value.shape[-1] == width and node in stage:
                last[stage[node]] = (node, value)

        got = executor.run(feed, positions, [len(feed)], [0], observe=keep)
        layers = sorted(s for s in last if s[0] == 1)
        if len(layers) != len(hidden) - 1 and k == 0:
            report.notes.append(f"the custom model has {len(layers)} layers, transformers' {len(hidden) - 1}")
        pairs = [(EMBEDDINGS, hidden[0])] + list(zip(layers[:-1], hidden[1:-1])) + [(HEAD, hidden[-1][-1:])]
        for s, expected in pairs:
            if s not in last:
                continue
            node, value = last[s]
            diff = Diff.of(value, expected)
            report.stats.setdefault(s, StageStats()).add(diff)
            if report.judged and not report.tolerance.accepts(diff):
                what = "transformers' normalized last hidden state" if s == HEAD else "transformers' hidden state"
                report.divergence = Divergence(custom.where(node), s, diff, [
                    f"the output of {stage_name(s)} (its last [tokens, {width}] value) differs from {what}",
                    _span(custom, stage, s)] + _decode_hints(custom, k), k)
                raise _Stop
        return got[0], want

    return run_steps(report, custom, ids, tokens, step)


def _decode_hints(graph: Graph, step: int) -> list[str]:
    """At a decode step (the prompt matched): the KV caches that more than one op of a type uses."""
    if not step:
        return []
    users: dict[tuple[str, int], list[str]] = defaultdict(list)
    for n in graph.order():
        if "layer" in graph[n]["attrs"]:
            users[(graph[n]["op"], int(graph[n]["attrs"]["layer"]))].append(str(graph[n]["loc"] or n))
    return [f"the prompt matched; {len(locs)} {op} ops use the KV cache of layer {layer} ({', '.join(locs)}): "
            f"each layer needs its own" for (op, layer), locs in users.items() if len(locs) > 1]


def _span(graph: Graph, stage: dict[str, Stage], s: Stage) -> str:
    """The source lines of one stage's ops."""
    locs = [graph[n]["loc"] for n in graph.order() if stage.get(n) == s and graph[n]["loc"]]
    if not locs:
        return "no source lines recorded for it"
    files = {loc.file for loc in locs}
    return f"its ops are at {', '.join(sorted(files))} lines {min(l.line for l in locs)}-{max(l.line for l in locs)}"


def transformers_reference(path: Path) -> Callable[[list[int]], tuple[list[np.ndarray], np.ndarray]]:
    """transformers' model in float32 (a GGUF dequantized) as a step function: next token ids -> (hidden states
    [tokens, hidden] each, last-token logits), keeping its KV cache between calls."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise GraphLLMError("--against transformers needs torch and transformers, which are not installed: "
                            "pip install 'graphllm[check]'") from None
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        path = path.parent
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    except Exception as e:  # transformers raises many types; the user needs the reason
        hint = " (a .gguf model needs: pip install 'graphllm[check]' gguf)" if "gguf_file" in kwargs else ""
        raise GraphLLMError(f"transformers could not load {path}: {type(e).__name__}: {e}{hint}") from None
    past: dict[str, Any] = {}
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.x: cache

    def step(ids: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """One forward over the next tokens, with the cache of the earlier ones."""
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), use_cache=True, output_hidden_states=True, **past)
        past[cache] = out[cache]
        return [h[0].float().numpy() for h in out.hidden_states], out.logits[0, -1].float().numpy()

    return step


def check_model(model_path: str | None, custom: str | Path, against: str = "builtin", prompt: str = DEFAULT_PROMPT,
                tolerance: Tolerance = Tolerance(), tokens: int = 0, dtype: str | None = None,
                max_kl: float = DEFAULT_MAX_KL) -> CheckReport:
    """Load the model, build the custom graph (and the built-in one) and compare them on the prompt.

    With a quantizing ``dtype`` the reference keeps float32 weights and the report is judged on KL only.
    """
    model = load_model(model_path)
    if model.tokenizer is None:
        raise GraphLLMError(f"{model.path} has no tokenizer: check needs one to encode --prompt")
    ids = model.tokenizer.encode(prompt)
    if not ids:
        raise GraphLLMError("--prompt encodes to no tokens")
    if tokens < 0:
        raise GraphLLMError(f"--tokens must be 0 or more, got {tokens}")
    unoptimised = ["verify"]  # every value stays one op of one file:line
    exact_kv = "float32"  # the descriptions are compared, not the cache's rounding (transformers keeps float32)
    built = build(model, GraphOptions(custom=custom, dtype=dtype, passes=unoptimised, kv_dtype=exact_kv))
    graph, notes = built.graph, built.notes
    weights = functools.partial(weight_source, model)
    quantized = dtype not in QUANT_FREE
    report = CheckReport(against, tolerance, judged=not quantized, max_kl=max_kl)
    if against == "transformers":
        compare_transformers(graph, weights, ids, transformers_reference(Path(model.path)), report, tokens)
    else:
        try:
            builtin = build(model, GraphOptions(dtype="float32" if quantized else None, passes=unoptimised,
                                                kv_dtype=exact_kv)).graph
        except ModelLoadError as e:
            raise GraphLLMError(f"{e}; or compare with transformers: --against transformers") from None
        compare_builtin(graph, builtin, weights, ids, report, tokens)
    report.notes[:0] = notes
    return report
