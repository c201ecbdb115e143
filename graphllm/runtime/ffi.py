"""TVM-FFI's C API through ctypes: the native libraries loaded without the `tvm_ffi` Python package (13 MiB less
resident than importing it), global functions called, kernel libraries loaded, raised errors read.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import importlib.util
import os
from pathlib import Path
from typing import cast

_NONE, _INT, _BOOL, _RAW_STR = 0, 1, 2, 8  # TVMFFITypeIndex values (tvm/ffi/c_api.h)
_OBJECT_BEGIN = 64  # kTVMFFIStaticObjectBegin: type indices from here on are reference-counted objects
_OBJECT_HEADER = 24  # sizeof(TVMFFIObject): an object's cell (an error's kind and message) follows it
_TYPE_INDEX_OFFSET = 8  # TVMFFIObject.type_index


class Any(ctypes.Structure):
    """TVMFFIAny: a type index and an 8-byte value (int, pointer or object handle)."""

    _fields_ = [("type_index", ctypes.c_int32), ("zero_padding", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class ByteArray(ctypes.Structure):
    """TVMFFIByteArray: a name passed in, an error's kind or message read out."""

    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class Handle:
    """An owned reference to a TVM-FFI object (a module, a function), released when this is collected."""

    def __init__(self, address: int) -> None:
        self.address = address
        self.type_index = ctypes.c_int32.from_address(address + _TYPE_INDEX_OFFSET).value
        self._release = native().TVMFFIObjectDecRef  # kept: still callable while the interpreter shuts down

    def __del__(self) -> None:
        self._release(ctypes.c_void_p(self.address))


def package_library(package: str, name: str) -> Path:
    """A native library shipped in an installed package's lib/ folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {package} package is not installed: {name} not found")
    return Path(list(spec.submodule_search_locations)[0]) / "lib" / name


@functools.lru_cache(maxsize=1)
def native() -> ctypes.CDLL:
    """libtvm_ffi.so with its C API declared, and libtvm_runtime.so after it (both RTLD_GLOBAL: kernel libraries
    resolve their symbols against them)."""
    lib = ctypes.CDLL(str(package_library("tvm_ffi", "libtvm_ffi.so")), ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(package_library("tvm", "libtvm_runtime.so")), ctypes.RTLD_GLOBAL)
    lib.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(ByteArray), ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(Any), ctypes.c_int32, ctypes.POINTER(Any)]
    lib.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIErrorMoveFromRaised.restype = None
    lib.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
    return lib


def raised_error(where: str) -> Exception:
    """The error a failed TVM-FFI call left raised in this thread, as the Python exception its kind names
    (ValueError, TypeError...; else RuntimeError), its message prefixed by `where`."""
    handle = ctypes.c_void_p()
    native().TVMFFIErrorMoveFromRaised(ctypes.byref(handle))
    if not handle.value:
        return RuntimeError(f"{where}: failed without an error")
    kind, message = (ByteArray.from_address(handle.value + _OBJECT_HEADER + i * ctypes.sizeof(ByteArray))
                     for i in range(2))
    kind_text, text = (ctypes.string_at(b.data, b.size).decode(errors="replace") for b in (kind, message))
    native().TVMFFIObjectDecRef(handle)
    error = getattr(builtins, kind_text, None)
    return (error if isinstance(error, type) and issubclass(error, Exception) else RuntimeError)(f"{where}: {text}")


@functools.lru_cache(maxsize=None)
def global_function(name: str) -> int:
    """The handle of a registered global function (held for the process: globals are never unregistered)."""
    encoded = name.encode()
    out = ctypes.c_void_p()
    if native().TVMFFIFunctionGetGlobal(ctypes.byref(ByteArray(ctypes.cast(encoded, ctypes.c_void_p), len(encoded))),
                                        ctypes.byref(out)) != 0:
        raise raised_error(name)
    if not out.value:
        raise LookupError(f"TVM has no global function {name!r}")
    return out.value


def call(function: int, where: str, *args: int | bool | str | Handle) -> int | Handle | None:
    """Call a TVM-FFI function with int, bool, string or object arguments; its int, object or None result."""
    values = (Any * max(len(args), 1))()
    keep = []  # the strings' bytes, alive until the call returns
    for value, arg in zip(values, args):
        if isinstance(arg, Handle):
            value.type_index, value.value = arg.type_index, arg.address
        elif isinstance(arg, str):
            keep.append(ctypes.c_char_p(arg.encode()))
            value.type_index, value.value = _RAW_STR, ctypes.cast(keep[-1], ctypes.c_void_p).value
        else:
            value.type_index, value.value = (_BOOL if isinstance(arg, bool) else _INT), int(arg) & (2**64 - 1)
    result = Any(_NONE, 0, 0)
    if native().TVMFFIFunctionCall(function, values, len(args), ctypes.byref(result)) != 0:
        raise raised_error(where)
    if result.type_index >= _OBJECT_BEGIN:
        return Handle(result.value)
    if result.type_index in (_INT, _BOOL):
        return ctypes.c_int64(result.value).value
    return None


def call_global(name: str, *args: int | bool | str | Handle) -> int | Handle | None:
    """Call a registered global function (see `call`)."""
    return call(global_function(name), name, *args)


def load_module(path: str | os.PathLike) -> Handle:
    """A library of kernels loaded by TVM's own loader (what `tvm_ffi.load_module` calls), kept loaded for the
    process as tvm_ffi keeps it (its code may be referenced until exit)."""
    module = cast(Handle, call_global("ffi.ModuleLoadFromFile", str(path)))
    call_global("ffi.ModuleGlobalsAdd", module)
    return module


def get_function(module: Handle, name: str) -> Handle:
    """A module's function by name (what `tvm_ffi.Module.__getitem__` calls); AttributeError if it has none."""
    function = call_global("ffi.ModuleGetFunction", module, name, False)
    if not isinstance(function, Handle):
        raise AttributeError(f"Module has no function '{name}'")
    return function
