"""LLM: a loaded model, its graph, an executor and the engine that generates text with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..dsl.graph import Graph
from ..dsl.reference import ReferenceExecutor
from ..errors import GenerationError
from ..io.loader import LoadedModel
from ..passes.kv_dtype import graph_kv_dtype
from ..pipeline import GraphOptions, build
from .engine import DEFAULT_STEP_TOKENS, Engine
from .generate import Chunk, check_prompt
from .sampling import SamplingParams

if TYPE_CHECKING:
    from ..codegen.tuning import TuningChoice

DEFAULT_MAX_CONTEXT = 4096
EXECUTORS = ("tvm", "reference")


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


class LLM:
    """The Python API: ``LLM.load(path).complete("The capital of France is")``."""

    def __init__(self, model: LoadedModel, graph: Graph, executor: Any, max_context: int,
                 notes: list[str], num_slots: int = 1, max_step_tokens: int = DEFAULT_STEP_TOKENS) -> None:
        self.model = model
        self.graph = graph
        self.executor = executor
        self.max_context = max_context
        self.notes = notes
        self.engine = Engine(self, num_slots, max_step_tokens)  # every generation runs here

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, custom: str | os.PathLike | None = None,
             executor: str = "tvm", max_context: int | None = None, num_slots: int = 1,
             artifact: str | os.PathLike | None = None, threads: int | None = None,
             dtype: str | None = None, passes: list[str] | None = None, show_progress: bool = False,
             max_seqs: int | None = None, device: str = "cpu", cuda_archs: tuple[str, ...] | None = None,
             tuned: TuningChoice = True, kv_dtype: str | None = None) -> "LLM":
        """Load weights and tokenizer, build the graph and an executor.

        ``tvm`` (default) runs compiled kernels: from ``artifact`` when given, else from the build
        cache (compiling on first use, with the knobs of the ``tuned`` database: True the default one, False
        none, or a folder); ``reference`` runs the numpy oracle. ``dtype`` None keeps a
        GGUF's blocks as they are; float32 dequantizes them; int8 / int4g[GROUP] quantize Linear weights.
        ``kv_dtype`` is the KV cache's element type (f16/float16, f32/float32; None: the pipeline's default).
        """
        if executor not in EXECUTORS:
            raise GenerationError(f"unknown executor {executor!r} (available: {', '.join(EXECUTORS)})")
        if device != "cpu":  # fail fast, before loading weights, on a machine without the GPU
            from .cuda import parse_device, require_cuda

            require_cuda(parse_device(device)[1])
        built = build(path, GraphOptions(custom=custom, dtype=dtype, passes=passes, kv_dtype=kv_dtype))
        model, graph, notes, weights = built.model, built.graph, built.notes, built.weights
        limit = int(graph.config["max_positions"])
        ctx = min(limit, max_context or DEFAULT_MAX_CONTEXT)
        if max_context and max_context > limit:
            notes.append(f"--max-context {max_context} exceeds the model's {limit} positions: using {limit}")
        if executor == "reference":
            runner = ReferenceExecutor(graph, weights, max_context=ctx, num_slots=num_slots)
        else:
            from .builds import open_build

            runner = open_build(graph, weights, artifact=artifact, max_context=ctx, num_slots=num_slots,
                                threads=threads, notes=notes, show_progress=show_progress, max_seqs=max_seqs,
                                device=device, cuda_archs=cuda_archs, tuned=tuned)
        return cls(model, graph, runner, ctx, notes, num_slots)

    @property
    def kv_dtype(self) -> str | None:
        """The KV cache's element type (float16 or float32)."""
        return graph_kv_dtype(self.graph)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def step(self, ids: Sequence[int], positions: Sequence[int], seq_lens: Sequence[int],
             slots: Sequence[int]) -> np.ndarray:
        """One raw forward step outside the engine (tests, bench, eval): logits [B, vocab]; the slots' prefixes are forgotten."""
        self.engine.forget(slots)
        return self.executor.run(ids, positions, seq_lens, slots)

    def prefill(self, ids: Sequence[int], slot: int = 0) -> np.ndarray:
        """Run a whole prompt into a slot's cache (a raw step); its last logits [vocab]."""
        check_prompt(len(ids), self.max_context)
        return self.step(ids, range(len(ids)), [len(ids)], [slot])[0]

    def decode(self, token: int, position: int, slot: int = 0) -> np.ndarray:
        """Run one token at a position of a slot (a raw step); its logits [vocab]."""
        return self.step([token], [position], [1], [slot])[0]

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt given as text or ids."""
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[Chunk]:
        """Stream a prompt's generation chunk by chunk, the engine stepping in this thread; leaving early cancels."""
        yield from self.engine.submit(self.encode_prompt(prompt), params or SamplingParams())

    def complete(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Completion:
        """Generate to the end and return the whole completion."""
        request = self.engine.submit(self.encode_prompt(prompt), params or SamplingParams())
        text = "".join(chunk.text for chunk in request)
        return Completion(text, request.history[request.prompt_tokens:], request.prompt_tokens,
                          str(request.finish_reason))
