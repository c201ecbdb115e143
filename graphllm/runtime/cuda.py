"""The CUDA executor: replays a CUDA build's plan with weights, activations and the KV cache on one GPU.

UNVERIFIED ON HARDWARE: written against TVM 0.27's runtime API by reading it; no GPU has run it yet
(benchmarks/gpu_check.sh is the check to run on a GPU machine). What needs no GPU is tested:
without a driver, `require_cuda` is a one-line error.

Loading: libtvm_runtime_cuda.so (it links libcuda.so.1, the driver) registers TVM's CUDA module
loader; the library's CUDA C is handed to `tvm_callback_cuda_compile` when it is loaded, and the
callback registered here answers with the fatbin nvcc built ahead of time (checked against the
source's digest in the plan), so neither nvcc nor NVRTC is needed. Memory: packed weights, the
activation buffers (the CPU executor's memory plan) and the KV cache are device tensors; each
step's inputs (ids, positions, slots, last rows) are staged in one host array and copied to the
GPU in one copy; the logits come back in one copy followed by the step's only stream sync.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..dsl.types import SEQS, TOKENS
from ..errors import GenerationError, GraphLLMError, ModelLoadError
from ..plan import (FATBIN_FILE, LIB_FILE, HostStep, InputValue, KVCacheArg, PackedWeightValue, ValueArg, ViewValue,
                    WeightValue, read_build)
from .executor import _NP, MAX_BINDINGS, CompiledExecutor
from .memory_plan import plan_memory
from .tvm import load_runtime

SOURCE_DIGEST = "cuda_source_sha256"  # the plan target's key (graphllm.codegen.target.SOURCE_DIGEST)
_STAGED = ("inputIds", "positions", "slots", "last_rows")  # the step inputs copied to the GPU each step


class DeviceError(GraphLLMError):
    """The requested device is not usable here (no GPU, no driver, no such index)."""


def parse_device(device: str) -> tuple[str, int]:
    """("cpu" | "cuda", index) of a --device value."""
    kind, _, index = device.partition(":")
    return kind, int(index or 0)


def require_cuda(index: int = 0) -> Any:
    """Load TVM's CUDA runtime and check GPU `index` exists; return tvm_ffi. DeviceError (one line) otherwise."""
    tvm_ffi = load_runtime()
    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is None:
        try:
            ctypes.CDLL(str(_tvm_lib_dir() / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise DeviceError(f"--device cuda needs an NVIDIA GPU with a CUDA 13-capable driver; TVM's CUDA runtime "
                              f"could not be loaded here ({e})") from None
    exists = tvm_ffi.get_global_func("runtime.GetDeviceAttr")(2, index, 0)  # kDLCUDA, kExist
    if not exists:
        raise DeviceError(f"no CUDA GPU {index} on this machine (--device cuda:{index})")
    return tvm_ffi


def _tvm_lib_dir() -> Path:
    """The folder of the TVM wheel's shared libraries."""
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise DeviceError("apache-tvm is not installed: TVM's CUDA runtime not found")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def register_fatbin(fatbin: bytes, digest: str) -> None:
    """Make TVM's CUDA module loader take `fatbin` for the CUDA source whose sha256 is `digest` (no compiler)."""
    tvm_ffi = load_runtime()

    def compile_cuda(code: str, *_: Any) -> bytes:
        """The prebuilt fatbin, for the source it was built from only."""
        if hashlib.sha256(code.encode()).hexdigest() != digest:
            raise ModelLoadError("the CUDA kernels in this build do not match its fatbin: recompile it")
        return fatbin

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


class CudaExecutor(CompiledExecutor):
    """Runs a CUDA build's plan on GPU `device`; same ``run`` contract as the other executors (UNVERIFIED, see above)."""

    def __init__(self, artifact: str | Path, weights: Mapping[str, np.ndarray], *, max_context: int,
                 num_slots: int = 1, chunk: int = 128, threads: int | None = None, max_seqs: int | None = None,
                 pack_cache: Path | None = None, device: int = 0) -> None:
        tvm_ffi = require_cuda(device)
        self.plan = plan = read_build(artifact)
        if plan.target.get("kind") != "cuda":
            raise ModelLoadError(f"the build in {artifact} is for the CPU: run it without --device cuda")
        if any(isinstance(s, HostStep) for s in plan.steps):
            raise ModelLoadError("Print/Exit ops run on the host, which --device cuda does not support yet")
        self.dev = tvm_ffi.device("cuda", device)
        self._ffi = tvm_ffi
        fatbin_path = Path(artifact) / FATBIN_FILE
        if not fatbin_path.is_file():
            raise ModelLoadError(f"{fatbin_path} is missing: recompile with `graphllm compile --device cuda`")
        register_fatbin(fatbin_path.read_bytes(), str(plan.target.get(SOURCE_DIGEST)))
        self.lib = tvm_ffi.load_module(str(Path(artifact) / LIB_FILE))
        self.threads = 1
        self.max_context, self.num_slots, self.chunk = max_context, num_slots, chunk
        self.max_seqs = max(num_slots, max_seqs or 0)
        self.steps, self.output = plan.steps, plan.output
        self._check_weights(weights)
        self.weights = {v: self._upload(a) for v, a in self._load_weights(weights, pack_cache).items()}
        from ..dsl.inputs import rope_tables

        tables = rope_tables(plan.config)
        uploaded = {id(a): self._upload(np.ascontiguousarray(a, np.float32)) for a in tables.values()}
        self.inputs = {name: uploaded[id(a)] for name, a in tables.items()}  # sinLocal may be sin
        self.staged = np.zeros((len(_STAGED), max(chunk, self.max_seqs)), np.int32)  # host side of the step inputs
        self.staged_dev = self._empty(self.staged.shape, "int32")
        self.caches = {layer: (self._empty(shape, dtype), self._empty(shape, dtype))
                       for layer, (shape, dtype) in self._cache_shapes().items()}
        self.storage = self._plan_storage()
        self._bindings: dict[tuple[int, int], list[tuple[Callable, tuple]]] = {}
        self._outputs: dict[tuple[int, int], Any] = {}
        self.weight_bytes = self._bytes_per_token()

    # -------------------------------------------------------------- device memory

    def _empty(self, shape: Sequence[int], dtype: str) -> Any:
        """An uninitialised device tensor."""
        alloc = self._ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        return alloc(self._ffi.Shape(tuple(int(d) for d in shape)), self._ffi.dtype(dtype), self.dev, None)

    def _upload(self, array: np.ndarray) -> Any:
        """A device copy of a host array."""
        out = self._empty(array.shape, str(array.dtype))
        self._copy(_host_tensor(array), out)
        return out

    def _copy(self, src: Any, dst: Any) -> None:
        """Copy one tensor into another (host <-> device), ordered on the device's stream."""
        self._ffi.get_global_func("runtime.TVMTensorCopyFromTo")(src, dst, None)

    def _view(self, base: Any, shape: Sequence[int], dtype: str, offset: int = 0) -> Any:
        """A tensor of `shape` and `dtype` over `base`'s memory from byte `offset`."""
        view = self._ffi.get_global_func("runtime.TVMTensorCreateView")
        return view(base, self._ffi.Shape(tuple(int(d) for d in shape)), self._ffi.dtype(dtype), offset)

    def _cache_shapes(self) -> dict[int, tuple[tuple[int, ...], str]]:
        """The [slots, max_context, kv_heads, head_dim] shape and the element type of each layer's KV cache."""
        return {s.layer: ((self.num_slots, self.max_context, *s.kv_shape), s.kv_dtype)
                for s in self.plan.kernel_steps if s.layer is not None and s.kv_shape is not None}

    def _plan_storage(self) -> dict[str, Any]:
        """Device storage per buffer value, shared as the CPU executor shares it (memory_plan)."""

        def nbytes(v: str) -> int:
            t = self.plan.values[v].type
            count = int(np.prod(t.concrete({TOKENS: self.chunk, SEQS: self.max_seqs}), dtype=np.int64))
            return count * np.dtype(_NP[t.dtype]).itemsize

        plan = plan_memory(self.steps, self.plan.values, self.output, nbytes)
        buffers = [self._empty((max(size, 1),), "uint8") for size in plan.sizes]
        self.activation_bytes = {"planned": plan.planned_bytes, "naive": plan.naive_bytes, "in_place": plan.in_place}
        return {v: buffers[i] for v, i in plan.buffer_of.items()}

    # -------------------------------------------------------------- binding

    def _array(self, v: str, tokens: int, seqs: int) -> Any:
        """The device tensor of a plan value for a step of this many tokens and sequences."""
        value = self.plan.values[v]
        shape = value.type.concrete({TOKENS: tokens, SEQS: seqs})
        if isinstance(value, InputValue):
            tables = self.inputs  # sin and cos live on the GPU for good, the step inputs are staged
            return tables[value.name] if value.name in tables else self._staged(value.name, shape[0])
        if isinstance(value, ViewValue):
            return self._view(self._array(value.of, tokens, seqs), shape, value.type.dtype)
        is_weight = isinstance(value, (WeightValue, PackedWeightValue))
        return self.weights[v] if is_weight else self._view(self.storage[v], shape, value.type.dtype)

    def _staged(self, name: str, rows: int) -> Any:
        """The device view of one staged step input (positionIds are the positions)."""
        row = _STAGED.index({"positionIds": "positions"}.get(name, name))
        if name not in ("inputIds", "positionIds", "positions", "slots", "last_rows"):
            raise ModelLoadError(f"graph input {name} is not supported with --device cuda yet")
        return self._view(self.staged_dev, (rows,), "int32", row * self.staged.shape[1] * 4)

    def _arg_array(self, step: Any, arg: Any, tokens: int, seqs: int) -> Any:
        """The device tensor bound to one kernel argument."""
        if isinstance(arg, ValueArg):
            return self._array(arg.value, tokens, seqs)
        if isinstance(arg, KVCacheArg):
            return self.caches[step.layer][0 if arg.half == "key" else 1]
        return self._staged(arg.name, seqs if arg.name == "last_rows" else tokens)

    def _bind(self, tokens: int, seqs: int) -> list[tuple[Callable, tuple]]:
        """The kernel calls of a step shape, bound once to device tensors (kept for MAX_BINDINGS shapes)."""
        key = (tokens, seqs)
        if key not in self._bindings:
            if len(self._bindings) >= MAX_BINDINGS:
                oldest = next(iter(self._bindings))
                del self._bindings[oldest], self._outputs[oldest]
            self._bindings[key] = [(self.lib[self.plan.kernel_symbol(s, tokens, seqs)],
                                    tuple(self._arg_array(s, a, tokens, seqs) for a in s.args)) for s in self.steps]
            self._outputs[key] = self._array(self.output, tokens, seqs)
        return self._bindings[key]

    # -------------------------------------------------------------- run

    def _step(self, ids: np.ndarray, pos: np.ndarray, lens: np.ndarray, slot_ids: np.ndarray) -> np.ndarray:
        """One step: stage the inputs (one copy to the GPU), launch every kernel, copy the logits back (one sync)."""
        tokens, seqs = len(ids), len(lens)
        staged = self.staged
        staged[0, :tokens], staged[1, :tokens] = ids, pos
        staged[2, :tokens] = np.repeat(slot_ids, lens)
        staged[3, :seqs] = np.cumsum(lens) - 1
        self._copy(_host_tensor(staged), self.staged_dev)
        calls = self._bind(tokens, seqs)
        for fn, args in calls:
            fn(*args)
        out = self._outputs[(tokens, seqs)]
        host = np.empty(tuple(out.shape), _NP[str(out.dtype)])
        self._copy(out, _host_tensor(host))
        self._ffi.get_global_func("runtime.Device_StreamSync")(self.dev, None)
        return host

    def profile(self, tokens: int = 1, seqs: int = 1, repeat: int = 5) -> dict[str, float]:
        """Not measured per kernel on the GPU (launches are asynchronous): a GenerationError."""
        raise GenerationError("per-kernel profiling is not available with --device cuda")


def _host_tensor(array: np.ndarray) -> Any:
    """A host numpy array as a tvm_ffi tensor (zero-copy; copies need no alignment)."""
    return load_runtime().from_dlpack(array)
