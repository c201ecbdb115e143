"""Kernel calls run natively: a kernel library opened with its step driver (codegen/driver.c), and programs, a
run of kernel calls whose DLTensors and TVMFFIAny argument arrays are built once, run in one call from Python.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plan import DamagedBuild
from . import ffi
from .tvm import check_buffer

_DL_TENSOR_PTR = 7  # kTVMFFIDLTensorPtr: an argument that points at a DLTensor
_DL_CPU = 1  # kDLCPU
_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}  # numpy dtype kind -> DLDataTypeCode (kDLInt, kDLUInt, kDLFloat, kDLBool)
_DL_BFLOAT = 4  # kDLBfloat (ml_dtypes.bfloat16, whose numpy kind is "V")
# The C structs as numpy records (x86-64 / aarch64 layout): DLTensor, TVMFFIAny, the driver's GraphllmCall.
_DL_TENSOR = np.dtype({"names": ["data", "device_type", "device_id", "ndim", "code", "bits", "lanes", "shape",
                                 "strides", "byte_offset"],
                       "formats": ["u8", "i4", "i4", "i4", "u1", "u1", "u2", "u8", "u8", "u8"],
                       "offsets": [0, 8, 12, 16, 20, 21, 22, 24, 32, 40], "itemsize": 48})
_ANY = np.dtype([("type_index", "i4"), ("zero_padding", "u4"), ("value", "u8")])
_CALL = np.dtype([("func", "u8"), ("args", "u8"), ("num_args", "i8")])
_RUN = "graphllm_run_program"


class KernelLibrary:
    """A kernel library loaded by TVM's loader, with the step driver linked into it; kernels looked up by name."""

    def __init__(self, path: str | os.PathLike) -> None:
        ffi.native()  # the symbols the library needs, first
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise DamagedBuild(Path(path), f"the kernel library cannot be loaded ({e})") from None
        if not hasattr(lib, _RUN):
            _unload(lib)  # else a rebuilt library at this path would open as this one
            raise DamagedBuild(Path(path), "the kernel library has no step driver (an older graphllm built it)")
        run = getattr(lib, _RUN)
        run.argtypes, run.restype = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p], ctypes.c_int64
        self.run = run
        self.module = ffi.load_module(path)
        self._kernels: dict[str, ffi.Handle] = {}

    def kernel(self, name: str) -> ffi.Handle:
        """A kernel by its symbol (looked up once)."""
        if name not in self._kernels:
            self._kernels[name] = ffi.get_function(self.module, name)
        return self._kernels[name]

    def program(self, calls: Sequence[tuple[str, Sequence[np.ndarray]]]) -> Program:
        """The kernel calls (symbol, argument arrays) bound as one native program."""
        return Program(self, calls)


class Program:
    """Kernel calls over arrays (kept alive here), run in order by the driver in one native call."""

    def __init__(self, library: KernelLibrary, calls: Sequence[tuple[str, Sequence[np.ndarray]]]) -> None:
        arrays = [check_buffer(a) for _, args in calls for a in args]
        self.names = [name for name, _ in calls]
        self.arrays = arrays
        self.kernels = [library.kernel(name) for name in self.names]
        self.shapes = np.array([d for a in arrays for d in a.shape] or [0], np.int64)
        self.tensors = np.zeros(len(arrays), _DL_TENSOR)
        self.args = np.zeros(len(arrays), _ANY)
        self.calls = np.zeros(len(calls), _CALL)
        ndims = np.array([a.ndim for a in arrays], np.int64)
        dtypes = [_dl_dtype(a.dtype) for a in arrays]
        t = self.tensors
        t["data"] = [a.ctypes.data for a in arrays]
        t["device_type"] = _DL_CPU
        t["ndim"] = ndims
        t["code"], t["bits"], t["lanes"] = ([d[i] for d in dtypes] for i in range(3))
        t["shape"] = self.shapes.ctypes.data + 8 * (np.cumsum(ndims) - ndims)
        self.args["type_index"] = _DL_TENSOR_PTR
        self.args["value"] = t.ctypes.data + t.itemsize * np.arange(len(arrays))
        counts = np.array([len(args) for _, args in calls], np.int64)
        self.calls["func"] = [k.address for k in self.kernels]
        self.calls["args"] = self.args.ctypes.data + self.args.itemsize * (np.cumsum(counts) - counts)
        self.calls["num_args"] = counts
        self._run = library.run
        self._address, self._count = self.calls.ctypes.data, len(calls)

    def __call__(self) -> None:
        """Run the calls; a failing kernel's error raised as the exception its kind names, naming the kernel."""
        self._execute(None)

    def timed(self) -> np.ndarray:
        """Run the calls once, timing each natively: seconds per call."""
        seconds = np.zeros(self._count)
        self._execute(seconds.ctypes.data)
        return seconds

    def _execute(self, seconds: int | None) -> None:
        done = self._run(self._address, self._count, seconds)
        if done != self._count:
            raise ffi.raised_error(f"kernel {self.names[done]}")


def _unload(lib: ctypes.CDLL) -> None:
    """Close a library opened here (dlclose): the next dlopen of its path reads the file again."""
    dlclose = ctypes.CDLL(None).dlclose
    dlclose.argtypes = [ctypes.c_void_p]
    dlclose(lib._handle)


def _dl_dtype(dtype: np.dtype) -> tuple[int, int, int]:
    """A numpy dtype as DLPack's (type code, bits, lanes)."""
    if dtype.name == "bfloat16":
        return _DL_BFLOAT, 16, 1
    if dtype.kind not in _DL_CODES:
        raise ValueError(f"kernel buffers of dtype {dtype} are not supported")
    return _DL_CODES[dtype.kind], 8 * dtype.itemsize, 1
