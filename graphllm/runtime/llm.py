"""LLM: a loaded model, its graph, an executor and the engine that generates text with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..errors import GenerationError
from ..host import return_freed_memory
from ..passes.kv_dtype import graph_kv_dtype, kv_bytes_per_position
from ..pipeline import GraphOptions
from .engine import DEFAULT_STEP_TOKENS, Engine
from .generate import Chunk, check_prompt
from .sampling import SamplingParams

if TYPE_CHECKING:
    from ..codegen.tuning_paths import TuningChoice
    from ..dsl.graph import Graph
    from ..io.loader import LoadedModel
    from ..io.tokenizer import Tokenizer
    from .starts import WarmStart

DEFAULT_MAX_CONTEXT = 4096
EXECUTORS = ("tvm", "reference")
_UNREAD = object()  # a warm start's tokenizer not read yet (or its copy damaged: the model's is read instead)


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


class LLM:
    """The Python API: ``LLM.load(path).complete("The capital of France is")``.

    A warm start (runtime/starts.py) holds neither the model's reader nor its graph: ``model`` and ``graph`` are
    then read or built on first use (export, tuning).
    """

    def __init__(self, executor: Any, max_context: int, notes: list[str], num_slots: int = 1,
                 max_step_tokens: int = DEFAULT_STEP_TOKENS, *, options: GraphOptions,
                 model: LoadedModel | None = None, graph: Graph | None = None, start: WarmStart | None = None,
                 tokenizer: Tokenizer | None | object = _UNREAD) -> None:
        if model is None and start is None:
            raise ValueError("an LLM needs its model or a warm start's record of it")
        self.executor = executor
        self.max_context = max_context
        self.notes = notes
        self.options = options
        self._model, self._graph, self._start = model, graph, start
        self._tokenizer = model.tokenizer if model is not None else tokenizer
        self.engine = Engine(self, num_slots, max_step_tokens)  # every generation runs here

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, custom: str | os.PathLike | None = None,
             executor: str = "tvm", max_context: int | None = None, num_slots: int = 1,
             artifact: str | os.PathLike | None = None, threads: int | None = None,
             dtype: str | None = None, passes: list[str] | None = None, show_progress: bool = False,
             max_seqs: int | None = None, device: str = "cpu", cuda_archs: tuple[str, ...] | None = None,
             tuned: TuningChoice = True, kv_dtype: str | None = None, tokenizer: bool = True) -> "LLM":
        """Load weights and tokenizer, build the graph and an executor.

        ``tvm`` (default) runs compiled kernels: from ``artifact`` when given, else from the build
        cache (compiling on first use, with the knobs of the ``tuned`` database: True the default one, False
        none, or a folder); ``reference`` runs the numpy oracle. ``dtype`` None keeps a
        GGUF's blocks as they are; float32 dequantizes them; int8 / int4g[GROUP] quantize Linear weights.
        ``kv_dtype`` is the KV cache's element type (f16/float16, f32/float32; None: the pipeline's default).
        A start like an earlier one (same model files, flags, graphllm, CPU, tuning) is warm: runtime/starts.py.
        ``tokenizer`` False (token ids only, as bench) leaves a warm start's tokenizer unread until it is used.
        """
        if executor not in EXECUTORS:
            raise GenerationError(f"unknown executor {executor!r} (available: {', '.join(EXECUTORS)})")
        if device != "cpu":  # fail fast, before loading weights, on a machine without the GPU
            from .cuda import parse_device, require_cuda

            require_cuda(parse_device(device)[1])
        options = GraphOptions(custom=custom, dtype=dtype, passes=passes, kv_dtype=kv_dtype)
        run = dict(max_context=max_context, num_slots=num_slots, threads=threads, max_seqs=max_seqs)
        key = None
        if executor == "tvm" and device == "cpu" and artifact is None:
            from ..io.download import default_model_path
            from .starts import find_start, start_key

            key = start_key(default_model_path() if path is None else Path(path).expanduser(), options, threads, tuned)
            start = find_start(key) if key else None
            warm = start and cls._warm(start, options, run, tokenizer)
            if warm is not None:
                return warm
        from ..pipeline import build

        built = build(path, options)
        model, graph, notes, weights = built.model, built.graph, built.notes, built.weights
        recorded = list(notes)
        ctx = _context(int(graph.config["max_positions"]), max_context, notes)
        if executor == "reference":
            from ..dsl.reference import ReferenceExecutor

            runner = ReferenceExecutor(graph, weights, max_context=ctx, num_slots=num_slots)
        else:
            from .builds import open_build

            before = len(notes)
            runner = open_build(graph, weights, artifact=artifact, **(run | {"max_context": ctx}), notes=notes,
                                show_progress=show_progress, device=device, cuda_archs=cuda_archs, tuned=tuned)
            recorded += notes[before:]
            if key is not None:
                from .starts import save_start

                save_start(key, model, weights, runner, recorded, runner.artifact)
        return cls(runner, ctx, notes, num_slots, options=options, model=model, graph=graph)

    @classmethod
    def _warm(cls, start: WarmStart, options: GraphOptions, run: dict[str, Any], tokenizer: bool) -> LLM | None:
        """The LLM of a warm start, or None when the start must be cold (the record's tokenizer copy, build or a
        packed weight is damaged or gone: the cold start mends it, saying so)."""
        notes = start.notes
        ctx = _context(int(start.config["max_positions"]), run["max_context"], notes)
        # the tokenizer before the weights: its parsing's transient heap comes and goes while the process is small
        read = _read_tokenizer(start) if tokenizer else _UNREAD
        if tokenizer and read is _UNREAD:  # its copy was damaged: the record is gone
            return None
        try:
            executor = start.open(**(run | {"max_context": ctx}))
        except Exception:
            return None
        return cls(executor, ctx, notes, run["num_slots"], options=options, start=start, tokenizer=read)

    @property
    def model(self) -> LoadedModel:
        """The model as read from its files (read now after a warm start, which needs only its record)."""
        if self._model is None:
            from ..io.loader import load_model

            self._model = load_model(self._start.model_path)
        return self._model

    @property
    def graph(self) -> Graph:
        """The model's graph after the passes (built now after a warm start, which runs the cached build)."""
        if self._graph is None:
            from ..pipeline import build

            self._graph = build(self.model, self.options).graph
        return self._graph

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer (a warm start's saved copy, or the model's if that is damaged)."""
        if self._tokenizer is _UNREAD:
            read = _read_tokenizer(self._start)
            self._tokenizer = self.model.tokenizer if read is _UNREAD else read
        return self._tokenizer

    @property
    def model_path(self) -> Path:
        """The model's file or folder."""
        return self._start.model_path if self._model is None else Path(self._model.path)

    @property
    def file_type(self) -> str:
        """How the model's weights are stored, e.g. gguf:Q4_K_M."""
        return self._start.file_type if self._model is None else self._model.file_type

    @property
    def generation_config(self) -> dict[str, Any]:
        """The model's generation defaults (eos ids, sampling values it sets)."""
        return self._start.generation_config if self._model is None else self._model.generation_config

    @property
    def config(self) -> dict[str, Any]:
        """The model's configuration as the graph holds it (max_positions, vocab_size, ...)."""
        plan = getattr(self.executor, "plan", None)
        return plan.config if plan is not None else self.graph.config

    @property
    def kv_dtype(self) -> str | None:
        """The KV cache's element type (float16 or float32)."""
        plan = getattr(self.executor, "plan", None)
        return plan.kv_dtype if plan is not None else graph_kv_dtype(self.graph)

    def kv_bytes_per_position(self) -> int:
        """Bytes of KV cache one token position takes in one slot, over all layers."""
        plan = getattr(self.executor, "plan", None)
        return plan.kv_bytes_per_position() if plan is not None else kv_bytes_per_position(self.graph)

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


def _context(limit: int, asked: int | None, notes: list[str]) -> int:
    """The KV cache length: what was asked (default DEFAULT_MAX_CONTEXT), at most the model's positions (noted)."""
    if asked and asked > limit:
        notes.append(f"--max-context {asked} exceeds the model's {limit} positions: using {limit}")
    return min(limit, asked or DEFAULT_MAX_CONTEXT)


def _read_tokenizer(start: WarmStart) -> Tokenizer | None | object:
    """A warm start's saved tokenizer, its parsing's freed heap handed back (building it from JSON peaks at twice
    what it keeps: 30 MiB for SmolLM2's); _UNREAD when the copy is damaged (the record is then gone)."""
    from .starts import ColdStart

    try:
        return start.tokenizer()
    except ColdStart:
        return _UNREAD
    finally:
        return_freed_memory()
