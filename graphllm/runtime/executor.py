"""The compiled executor: replays a build plan's kernels over buffers allocated once.

Everything a step needs is allocated at load: weights (re-laid out once where a kernel asks),
activation buffers sized for the largest chunk and shared between values whose lifetimes do not
overlap, the KV cache ``[slots, max_context, kv_heads, head_dim]`` per layer (of the plan's kv_dtype), and the
step inputs.
Per token count the kernel calls are bound once to DLTensors (views of those buffers) and cached as native
programs split by the host steps, so a decode step is one call into the step driver per program, allocating nothing.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from numpy.lib import format as npy_format

from ..dsl import ops as O
from ..dsl.inputs import rope_tables
from ..dsl.types import SEQS, TOKENS, TensorType
from ..errors import GenerationError, ModelLoadError
from ..host import return_freed_memory
from ..io.cache import FileSum, digest, digester, read_checked_json, write_checked_json
from ..io.weights import numpy_float
from ..layouts import aligned_empty, get_packer
from ..plan import (LIB_FILE, Arg, HostStep, InputValue, KVCacheArg, PackedWeightValue, Plan, Step, ValueArg,
                    ViewValue, WeightValue, read_build)
from .memory_plan import plan_memory
from .program import KernelLibrary, Program
from .tvm import configure_threads

_NP = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}
MAX_BINDINGS = 8
_HASH_CHUNK = 1 << 18  # packed weights are hashed in pieces that are still in the CPU cache after reading


def _size(t: TensorType, tokens: int, seqs: int) -> int:
    return int(np.prod(t.concrete({TOKENS: tokens, SEQS: seqs}), dtype=np.int64))


class CompiledExecutor:
    """Runs a compiled plan; same ``run`` contract as the reference executor."""

    def __init__(self, artifact: str | Path, weights: Mapping[str, np.ndarray], *, max_context: int,
                 num_slots: int = 1, chunk: int = 128, threads: int | None = None,
                 max_seqs: int | None = None, pack_cache: Path | None = None) -> None:
        self.artifact = Path(artifact)
        self.plan = plan = read_build(artifact)  # the library is checked before it is opened
        self.threads = configure_threads(threads)
        self.library_path = Path(artifact) / LIB_FILE
        self.lib = KernelLibrary(self.library_path)
        self.max_context, self.num_slots, self.chunk = max_context, num_slots, chunk
        self.max_seqs = max(num_slots, max_seqs or 0)  # sequences per step (eval packs one per token)
        self.steps = plan.steps
        self.output = plan.output
        self._check_weights(weights)
        self.weights = self._load_weights(weights, pack_cache)
        self.inputs = {
            "inputIds": aligned_empty(chunk, "int32"), "positionIds": aligned_empty(chunk, "int32"),
            "seqLens": aligned_empty(self.max_seqs, "int32"), "attentionMask": aligned_empty(chunk, "int32"),
            "atype": aligned_empty((), "float32"),
        } | _rope_inputs(plan.config, max_context)
        self.extras = {"positions": self.inputs["positionIds"], "slots": aligned_empty(chunk, "int32"),
                       "last_rows": aligned_empty(self.max_seqs, "int32"), "threads": aligned_empty(1, "int32")}
        self.extras["threads"][0] = self.threads
        self.caches = self._allocate_caches()
        self.storage = self._plan_storage()
        self._bindings: OrderedDict[tuple[int, int], list[Callable[[], None]]] = OrderedDict()
        self._outputs: dict[tuple[int, int], np.ndarray] = {}  # the output view of each bound step shape
        self.weight_bytes = self._bytes_per_token()
        return_freed_memory()  # packing temporaries, the GGUF header's strings: 10 MB of a SmolLM2 load that packs

    # -------------------------------------------------------------- load

    def _used_weights(self) -> dict[str, tuple[WeightValue, str | None]]:
        """Weight values some step reads, each with its model weight and the layout it is packed to (or None)."""
        used = {v for step in self.steps for v in step.value_ids()}
        out: dict[str, tuple[WeightValue, str | None]] = {}
        for v, value in self.plan.values.items():
            if v in used and isinstance(value, WeightValue):
                out[v] = (value, None)
            elif v in used and isinstance(value, PackedWeightValue):
                out[v] = (self.plan.values[value.source], value.layout)
        return out

    def _check_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        types = getattr(weights, "types", {})
        for weight, _ in self._used_weights().values():
            name = weight.name
            if name not in weights:
                raise ModelLoadError(f"the build needs weight {name!r}, which the model lacks: "
                                     f"this build is for another model")
            have = types.get(name) or TensorType(tuple(weights[name].shape))
            if have.shape != weight.type.shape or have.dtype != weight.type.dtype:
                raise ModelLoadError(f"weight {name!r} is {have} but the build was compiled for {weight.type}: "
                                     f"this build is for another model or --dtype")

    def _load_weights(self, weights: Mapping[str, np.ndarray], pack_cache: Path | None) -> dict[str, np.ndarray]:
        """Each used weight read once from the model, re-laid out if a kernel asks, 64-byte aligned.

        Re-laid-out weights are kept in ``pack_cache`` (when given) and read back on later loads (checked on
        the executor's threads), so a cached start skips decoding and packing; one whose checksum does not
        match is packed again (one warning for all).
        """
        used = self._used_weights()
        paths = {v: pack_cache / f"{digest(v, 20)}.npy"
                 for v, (_, layout) in used.items() if pack_cache and layout}
        with ThreadPoolExecutor(self.threads) as pool:
            found = dict(zip(paths, pool.map(_try_load_packed, paths.values())))
        out: dict[str, np.ndarray] = {}
        damaged = [why for why in found.values() if isinstance(why, str)]
        for v, (weight, layout) in used.items():
            if isinstance(found.get(v), np.ndarray):
                out[v] = found[v]
                continue
            t = weight.type
            stored = np.uint8 if t.quantized else numpy_float(t.dtype) or np.float32  # 16-bit weights stay 16-bit
            arr = np.asarray(weights[weight.name], dtype=stored)
            out[v] = get_packer(layout)(arr) if layout else _aligned(arr)
            if v in paths:
                _save_packed(paths[v], out[v])
        if damaged:
            warnings.warn(f"{len(damaged)} packed weight(s) in {pack_cache} were damaged ({damaged[0]}); packed them again")
        return out

    def _allocate_caches(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        caches = {}
        for step in self.plan.kernel_steps:
            if step.layer is not None and step.kv_shape is not None:
                shape = (self.num_slots, self.max_context, *step.kv_shape)
                caches[step.layer] = (aligned_empty(shape, step.kv_dtype), aligned_empty(shape, step.kv_dtype))
        return caches

    def _plan_storage(self) -> dict[str, np.ndarray]:
        """Flat storage per buffer value, shared by values whose lifetimes do not overlap (memory_plan)."""

        def nbytes(v: str) -> int:
            t = self.plan.values[v].type
            return _size(t, self.chunk, self.max_seqs) * np.dtype(_NP[t.dtype]).itemsize

        plan = plan_memory(self.steps, self.plan.values, self.output, nbytes)
        buffers = [aligned_empty(size, "uint8") for size in plan.sizes]
        self.activation_bytes = {"planned": plan.planned_bytes, "naive": plan.naive_bytes, "in_place": plan.in_place}
        return {v: buffers[i] for v, i in plan.buffer_of.items()}

    def _bytes_per_token(self) -> int:
        """Weight bytes a decode step reads: every weight, except those only gathered from (embedding tables, one row each)."""
        streamed = {v for step in self.plan.kernel_steps if step.op != "Embedding" for v in step.value_ids()}
        return sum(a.nbytes for v, a in self.weights.items() if v in streamed)

    # -------------------------------------------------------------- binding

    def _array(self, v: str, tokens: int, seqs: int) -> np.ndarray:
        value = self.plan.values[v]
        t = value.type
        shape = t.concrete({TOKENS: tokens, SEQS: seqs})
        if isinstance(value, (WeightValue, PackedWeightValue)):
            return self.weights[v]
        if isinstance(value, InputValue):
            arr = self.inputs[value.name]
            return arr if arr.ndim != 1 or not isinstance(t.shape[0], str) else arr[:shape[0]]
        if isinstance(value, ViewValue):
            return self._array(value.of, tokens, seqs).reshape(shape)
        n = _size(t, tokens, seqs)
        return self.storage[v][:n * np.dtype(_NP[t.dtype]).itemsize].view(_NP[t.dtype]).reshape(shape)

    def _bind(self, tokens: int, seqs: int) -> list[Callable[[], None]]:
        """The step of this shape as parts run in order: native programs of kernel calls between host steps."""
        key = (tokens, seqs)
        if key in self._bindings:
            self._bindings.move_to_end(key)
            return self._bindings[key]
        parts: list[Callable[[], None]] = []
        kernels: list[tuple[str, list[np.ndarray]]] = []
        for step in self.steps:
            if isinstance(step, HostStep):
                parts.extend([self.lib.program(kernels)] if kernels else [])
                parts.append(self._host_call(step, tokens, seqs))
                kernels = []
                continue
            kernels.append((self.plan.kernel_symbol(step, tokens, seqs), self._step_arrays(step, tokens, seqs)))
        parts.extend([self.lib.program(kernels)] if kernels else [])
        self._bindings[key] = parts
        self._outputs[key] = self._array(self.output, tokens, seqs)
        if len(self._bindings) > MAX_BINDINGS:
            del self._outputs[self._bindings.popitem(last=False)[0]]
        return parts

    def ffi_calls(self, tokens: int, seqs: int) -> list[tuple[Callable, tuple]]:
        """The step of this shape as tvm_ffi calls over the executor's own buffers, for tools that swap or time kernels
        one by one (the tuner; imports tvm_ffi): (kernel, tensors) per kernel step, (host op, ()) per host step."""
        from .tvm import as_tensor

        return [(self._host_call(step, tokens, seqs), ()) if isinstance(step, HostStep) else
                (self.ffi_library[self.plan.kernel_symbol(step, tokens, seqs)],
                 tuple(as_tensor(a) for a in self._step_arrays(step, tokens, seqs))) for step in self.steps]

    @functools.cached_property
    def ffi_library(self) -> Any:
        """The kernel library as a tvm_ffi module, for tools (loaded on first use: imports tvm_ffi)."""
        from .tvm import load_module

        return load_module(self.library_path)

    def _step_arrays(self, step: Step, tokens: int, seqs: int) -> list[np.ndarray]:
        """The arrays bound to a kernel step's arguments for a step of this many tokens and sequences."""
        return [self._arg_array(step, a, tokens, seqs) for a in step.args]

    def _arg_array(self, step: Step, arg: Arg, tokens: int, seqs: int) -> np.ndarray:
        """The array bound to one kernel argument for a step of this many tokens and sequences."""
        if isinstance(arg, ValueArg):
            return self._array(arg.value, tokens, seqs)
        if isinstance(arg, KVCacheArg):
            return self.caches[step.layer][0 if arg.half == "key" else 1]
        rows = {"last_rows": seqs, "threads": 1}.get(arg.name, tokens)
        return self.extras[arg.name][:rows]

    def _host_call(self, step: HostStep, tokens: int, seqs: int) -> Callable[[], None]:
        spec = O.get_spec(step.op)
        arrays = {port: self._array(v, tokens, seqs) for port, v in step.args.items()}
        names = {port: _value_name(self.plan, v) for port, v in step.args.items()}

        def host() -> None:
            spec.reference(arrays, {}, O.RefContext(names=names))
        return host

    # -------------------------------------------------------------- run

    def run(self, input_ids: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray,
            seq_lens: Sequence[int] | np.ndarray, slots: Sequence[int] | np.ndarray) -> np.ndarray:
        """One step over packed sequences: logits of each sequence's last token [B, vocab] (a copy)."""
        ids = np.asarray(input_ids, np.int32)
        pos = np.asarray(positions, np.int32)
        lens = np.asarray(seq_lens, np.int32)
        slot_ids = np.asarray(slots, np.int32)
        if len(lens) > self.max_seqs or (slot_ids.size and (slot_ids.max() >= self.num_slots or slot_ids.min() < 0)):
            raise GenerationError(f"this executor has {self.num_slots} KV-cache slot(s) and takes {self.max_seqs} "
                                  f"sequence(s) a step")
        if pos.size and pos.max() >= self.max_context:
            raise GenerationError(f"position {int(pos.max())} is past the context of {self.max_context} tokens")
        if len(ids) <= self.chunk:
            return self._step(ids, pos, lens, slot_ids)
        starts = np.concatenate([[0], np.cumsum(lens)])
        outs = []
        for b in range(len(lens)):
            rows = slice(starts[b], starts[b + 1])
            s_ids, s_pos = ids[rows], pos[rows]
            for c in range(0, len(s_ids), self.chunk):
                part = slice(c, c + self.chunk)
                n = len(s_ids[part])
                logits = self._step(s_ids[part], s_pos[part], np.array([n], np.int32), slot_ids[b:b + 1])
            outs.append(logits[0])
        return np.stack(outs)

    def _step(self, ids: np.ndarray, pos: np.ndarray, lens: np.ndarray, slot_ids: np.ndarray) -> np.ndarray:
        tokens, seqs = len(ids), len(lens)
        self.inputs["inputIds"][:tokens] = ids
        self.inputs["positionIds"][:tokens] = pos
        self.inputs["seqLens"][:seqs] = lens
        if seqs == 1:  # one sequence (every decode step without batching): no numpy temporaries
            self.extras["slots"][:tokens] = slot_ids[0]
            self.extras["last_rows"][0] = tokens - 1
        else:
            self.extras["slots"][:tokens] = np.repeat(slot_ids, lens)
            np.cumsum(lens, out=self.extras["last_rows"][:seqs])
            self.extras["last_rows"][:seqs] -= 1
        parts = self._bind(tokens, seqs)
        try:
            for part in parts:
                part()
        except O.OpExit as e:
            raise GenerationError(str(e)) from None
        return self._outputs[(tokens, seqs)].copy()

    def profile(self, tokens: int = 1, seqs: int = 1, repeat: int = 5) -> dict[str, float]:
        """Time of a step vs the time spent inside kernels, for the host (Python + FFI) overhead share.

        Kernel time = each kernel call timed by the step driver, plus each host step timed here; ffi_call_s is the
        cost of one call from Python into the driver (an empty program), paid once per program of a step.
        """
        parts = self._bind(tokens, seqs)
        self.inputs["inputIds"][:tokens] = 0
        self.inputs["positionIds"][:tokens] = np.arange(tokens)
        self.inputs["seqLens"][:seqs] = tokens // seqs
        self.extras["slots"][:tokens] = 0
        self.extras["last_rows"][:seqs] = np.arange(1, seqs + 1) * (tokens // seqs) - 1
        null = self.lib.program([])
        t0 = time.perf_counter()
        for _ in range(1000):
            null()
        ffi = (time.perf_counter() - t0) / 1000
        kernel = 0.0
        for _ in range(repeat):
            for part in parts:
                if isinstance(part, Program):
                    kernel += float(part.timed().sum())
                    continue
                t0 = time.perf_counter()
                part()
                kernel += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeat):
            for part in parts:
                part()
        total = time.perf_counter() - t0
        return {"step_s": total / repeat, "kernels_s": kernel / repeat, "launches": len(self.steps),
                "ffi_call_s": ffi}


def _try_load_packed(path: Path) -> np.ndarray | str | None:
    """A packed weight saved earlier (see _load_packed); None when there is none, why when it is damaged."""
    if not path.exists():
        return None
    try:
        return _load_packed(path)
    except (OSError, ValueError) as e:
        return str(e)


def _load_packed(path: Path) -> np.ndarray:
    """A packed weight saved earlier, read once into aligned anonymous memory (where the kernels read it as
    they read freshly packed weights) and used only if its bytes match the size and digest of its sidecar.

    The .npy header is parsed by numpy's format module (no pickle: object arrays are refused); the data is
    hashed chunk by chunk as it is read. Any mismatch or unreadable file is a ValueError or OSError.
    """
    expected = FileSum.from_json(read_checked_json(_sum_path(path).read_text()))
    if path.stat().st_size != expected.size:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes, {expected.size} were written")
    with path.open("rb") as f:
        version = npy_format.read_magic(f)
        shape, fortran, dtype = (npy_format.read_array_header_1_0 if version == (1, 0)
                                 else npy_format.read_array_header_2_0)(f)
        if dtype.hasobject or fortran:
            raise ValueError(f"{path.name} is not a packed weight ({dtype}, fortran order {fortran})")
        header = f.tell()
        f.seek(0)
        running = digester()
        running.update(f.read(header))
        arr = aligned_empty(shape, dtype)
        data = memoryview(arr.reshape(-1).view(np.uint8))
        for start in range(0, len(data), _HASH_CHUNK):
            part = data[start:start + _HASH_CHUNK]
            if f.readinto(part) != len(part):
                raise ValueError(f"{path.name} is shorter than the {shape} {dtype} array its header says")
            running.update(part)
    if running.hexdigest() != expected.digest:
        raise ValueError(f"{path.name} does not match the checksum recorded when it was written")
    return arr


def _save_packed(path: Path, arr: np.ndarray) -> None:
    """Keep a packed weight for the next start with its size and digest beside it (each written atomically,
    the checksum first; a read-only cache only costs speed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, arr, allow_pickle=False)
        write_checked_json(_sum_path(path), FileSum.of(tmp).to_json())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _sum_path(path: Path) -> Path:
    """The sidecar holding a packed weight's size and digest."""
    return path.with_name(f"{path.name}.sum")


def _value_name(plan: Plan, v: str) -> str:
    """A value's name as the user wrote it (inputs and weights), else its id."""
    value = plan.values[v]
    return value.name if isinstance(value, (InputValue, WeightValue)) else v


def _rope_inputs(config: Mapping[str, Any], max_context: int) -> dict[str, np.ndarray]:
    """The RoPE tables' first ``max_context`` rows in aligned arrays; the whole tables (2 MiB for a 8k-position
    model) are freed on return, before the executor hands the freed heap back."""
    tables = rope_tables(config)
    aligned = {id(a): _first_rows(a, max_context) for a in tables.values()}  # sinLocal may be sin itself
    return {name: aligned[id(a)] for name, a in tables.items()}


def _first_rows(arr: np.ndarray, rows: int) -> np.ndarray:
    """arr's first `rows` rows in an aligned array of arr's shape whose later rows are never written: positions past
    the context are never read, so those pages are never touched (not resident)."""
    out = aligned_empty(arr.shape, arr.dtype)
    out[:rows] = arr[:rows]
    return out


def _aligned(arr: np.ndarray) -> np.ndarray:
    out = aligned_empty(arr.shape, arr.dtype)
    out[...] = arr
    return out
