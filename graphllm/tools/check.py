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

Against transformers, each stage's last [tokens, hidden] value is compared with transformers'
``output_hidden_states`` (the last one, which transformers normalizes, with the head's normalized
last-token state), then the logits.
"""

from __future__ import annotations

import functools
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


@dataclass
class StageStats:
    """How many values of one stage were compared and their largest difference."""

    compared: int = 0
    max_diff: float = 0.0


@dataclass
class Divergence:
    """The first custom value that differs from its reference counterpart beyond the tolerance."""

    where: str
    stage: Stage
    diff: float
    details: list[str]


@dataclass
class CheckReport:
    """The outcome of one check: per-stage statistics, the first divergence (if any), the logits' difference."""

    against: str
    tol: float
    stats: dict[Stage, StageStats] = field(default_factory=dict)
    divergence: Divergence | None = None
    logits_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No divergence, and the logits agree within the tolerance."""
        return self.divergence is None and self.logits_diff is not None and self.logits_diff <= self.tol

    def lines(self) -> list[str]:
        """The report as printed."""
        out = [f"note: {n}" for n in self.notes]
        for stage, s in self.stats.items():
            mark = "  <- diverges" if self.divergence and self.divergence.stage == stage else ""
            what = f"{s.compared} value{'s' if s.compared != 1 else ''}" if self.against == "builtin" else "output"
            out.append(f"{stage_name(stage):>12}: {what}, max |diff| {s.max_diff:.3g}{mark}")
        if self.divergence:
            d = self.divergence
            out.append(f"first divergence beyond {self.tol:g}: {d.where}: max |diff| {d.diff:.4g}")
            out += [f"  {line}" for line in d.details]
        elif self.logits_diff is not None:
            verdict = "matches" if self.ok else "differs from"
            out.append(f"logits: max |diff| {self.logits_diff:.3g}: the custom model {verdict} the {self.against} "
                       f"reference (tolerance {self.tol:g})")
        return out


class _Stop(Exception):
    """Ends a run at the first divergence."""


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64 (0 for empty arrays)."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


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


def compare_builtin(custom: Graph, reference: Graph, weights: Callable[[Graph], Any], ids: list[int],
                    tol: float) -> CheckReport:
    """Run both graphs on the prompt and walk the custom values in order (see the module doc)."""
    report = CheckReport("builtin", tol)
    c_stage, r_stage = stages(custom), stages(reference)
    keys = value_keys(custom, c_stage, rename_map(custom, reference))
    ref_keys = value_keys(reference, r_stage)
    by_key = {k: n for n, k in ref_keys.items()}
    by_name: dict[tuple[Stage, str], list[str]] = defaultdict(list)
    for n, (stage, name, _) in ref_keys.items():
        by_name[(stage, name)].append(n)
    ref_values: dict[str, np.ndarray] = {}
    args = (ids, range(len(ids)), [len(ids)], [0])
    ref_logits = _executor(reference, weights).run(*args, observe=ref_values.__setitem__)

    def observe(node: str, value: np.ndarray) -> None:
        """Compare one custom value with its counterpart; stop at the first divergence."""
        key = keys.get(node)
        target = by_key.get(key) if key else None
        others = [n for n in by_name.get(key[:2], []) if n != target] if key else []
        if target is None and not others:
            return
        stats = report.stats.setdefault(key[0], StageStats())
        stats.compared += 1
        if target is not None and ref_values[target].shape == value.shape:
            diff = _max_diff(value, ref_values[target])
            if diff <= tol:
                stats.max_diff = max(stats.max_diff, diff)
                return
        same = [d for d in (_max_diff(value, ref_values[n]) for n in others if ref_values[n].shape == value.shape)
                if d <= tol]
        if same:  # the same value under another occurrence of the name
            stats.max_diff = max(stats.max_diff, min(same))
            return
        expected = ref_values[target or others[0]]
        if expected.shape != value.shape:
            diff, detail = float("inf"), f"shape {list(value.shape)} here, {list(expected.shape)} in the reference"
        else:
            diff, detail = _max_diff(value, expected), _worst(value, expected)
        if target is None:
            times = "once" if len(others) == 1 else f"{len(others)} times"
            details = [f"the reference writes data[{key[1]!r}] {times} in {stage_name(key[0])}; "
                       f"this extra write equals none of those values"]
        else:
            details = explain(custom, node, reference, target, keys, ref_keys)
        equal = [n for n, k in ref_keys.items()
                 if k[0] == key[0] and ref_values[n].shape == value.shape and _max_diff(value, ref_values[n]) <= tol]
        if equal:
            details.append(f"its value equals the reference's {_describe(reference, equal[0])}"
                           + (": is it written to the wrong name (swapped ports)?" if target is None else ""))
        stats.max_diff = max(stats.max_diff, diff)
        report.divergence = Divergence(custom.where(node), key[0], diff, details + [detail])
        raise _Stop

    try:
        logits = _executor(custom, weights).run(*args, observe=observe)
    except _Stop:
        return report
    except O.OpExit:
        report.notes.append("the custom file's Exit op stopped the run: compared the values before it")
        return report
    report.logits_diff = _max_diff(logits, ref_logits)
    if report.logits_diff > tol:
        out = custom.outputs["logits"]
        report.divergence = Divergence(custom.where(out), c_stage[out], report.logits_diff,
                                       ["no value before the logits differs from the reference's: the values "
                                        "computed differently have no counterpart there", _worst(logits, ref_logits)])
    return report


def _worst(a: np.ndarray, b: np.ndarray) -> str:
    """Where two same-shaped arrays differ most."""
    i = np.unravel_index(int(np.argmax(np.abs(a.astype(np.float64) - b))), a.shape)
    return f"at index {list(map(int, i))}: {float(a[i]):.6g} here, {float(b[i]):.6g} in the reference"


def _executor(graph: Graph, weights: Callable[[Graph], Any]) -> ReferenceExecutor:
    """A one-slot reference executor for the graph."""
    return ReferenceExecutor(graph, weights(graph), max_context=int(graph.config["max_positions"]))


def compare_transformers(custom: Graph, weights: Callable[[Graph], Any], ids: list[int], hidden: list[np.ndarray],
                         hf_logits: np.ndarray, tol: float) -> CheckReport:
    """Compare each stage's output hidden state and the logits with transformers' (see the module doc)."""
    report = CheckReport("transformers", tol)
    stage = stages(custom)
    width = hidden[0].shape[-1]
    last: dict[Stage, tuple[str, np.ndarray]] = {}

    def observe(node: str, value: np.ndarray) -> None:
        """Keep each stage's latest [tokens, hidden] value."""
        if value.ndim == 2 and value.shape[-1] == width and node in stage:
            last[stage[node]] = (node, value)

    try:
        logits = _executor(custom, weights).run(ids, range(len(ids)), [len(ids)], [0], observe=observe)
    except O.OpExit:
        report.notes.append("the custom file's Exit op stopped the run")
        return report
    layers = sorted(s for s in last if s[0] == 1)
    if len(layers) != len(hidden) - 1:
        report.notes.append(f"the custom model has {len(layers)} layers, transformers' {len(hidden) - 1}")
    pairs = [(EMBEDDINGS, hidden[0])] + [(s, h) for s, h in zip(layers[:-1], hidden[1:-1])] + [(HEAD, hidden[-1][-1:])]
    for s, expected in pairs:
        node, value = last.get(s, (None, None))
        if node is None:
            continue
        diff = _max_diff(value, expected) if value.shape == expected.shape else float("inf")
        report.stats[s] = StageStats(1, diff)
        if diff > tol:
            what = "transformers' normalized last hidden state" if s == HEAD else "transformers' hidden state"
            report.divergence = Divergence(custom.where(node), s, diff, [
                f"the output of {stage_name(s)} (its last [tokens, {width}] value) differs from {what}",
                _span(custom, stage, s)])
            return report
    report.logits_diff = _max_diff(logits[0], hf_logits)
    return report


def _span(graph: Graph, stage: dict[str, Stage], s: Stage) -> str:
    """The source lines of one stage's ops."""
    locs = [graph[n]["loc"] for n in graph.order() if stage.get(n) == s and graph[n]["loc"]]
    if not locs:
        return "no source lines recorded for it"
    files = {loc.file for loc in locs}
    return f"its ops are at {', '.join(sorted(files))} lines {min(l.line for l in locs)}-{max(l.line for l in locs)}"


def transformers_outputs(path: Path, ids: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """transformers' per-layer hidden states ([T, H] each) and last-token logits for the prompt, in float32."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise GraphLLMError("--against transformers needs torch and transformers, which are not installed: "
                            "pip install torch transformers (a .gguf model also needs: pip install accelerate gguf)"
                            ) from None
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        path = path.parent
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    except Exception as e:  # transformers raises many types; the user needs the reason
        raise GraphLLMError(f"transformers could not load {path}: {type(e).__name__}: {e}") from None
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return [h[0].float().numpy() for h in out.hidden_states], out.logits[0, -1].float().numpy()


def check_model(model_path: str | None, custom: str | Path, against: str = "builtin", prompt: str = DEFAULT_PROMPT,
                tol: float = 1e-4) -> CheckReport:
    """Load the model, build the custom graph (and the built-in one) and compare them on the prompt."""
    model = load_model(model_path)
    if model.tokenizer is None:
        raise GraphLLMError(f"{model.path} has no tokenizer: check needs one to encode --prompt")
    ids = model.tokenizer.encode(prompt)
    if not ids:
        raise GraphLLMError("--prompt encodes to no tokens")
    unoptimised = ["verify"]  # every value stays one op of one file:line
    built = build(model, GraphOptions(custom=custom, passes=unoptimised))
    graph, notes = built.graph, built.notes
    weights = functools.partial(weight_source, model)
    if against == "transformers":
        hidden, logits = transformers_outputs(Path(model.path), ids)
        report = compare_transformers(graph, weights, ids, hidden, logits, tol)
    else:
        try:
            builtin = build(model, GraphOptions(passes=unoptimised)).graph
        except ModelLoadError as e:
            raise GraphLLMError(f"{e}; or compare with transformers: --against transformers") from None
        report = compare_builtin(graph, builtin, weights, ids, tol)
    report.notes[:0] = notes
    return report
