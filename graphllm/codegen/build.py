"""Build PrimFuncs into one shared library (needs the TVM compiler): `build_module` -> `export_module`.

The library is loaded and called by the thin runtime (graphllm/runtime/tvm.py). A CUDA build's
library holds the host code and the generated CUDA C; TVM 0.27 compiles that source only when the
library is loaded (through a `tvm_callback_cuda_compile` registered then, NVRTC or nvcc). So the
source is compiled here, ahead of time, by the machine's nvcc into one fatbin for the target's
archs (`compile_fatbin`), stored beside the library; the runtime registers a callback that hands
that fatbin over (graphllm/runtime/cuda.py), and the GPU machine needs neither nvcc nor NVRTC.
Every library also holds the native step driver (DRIVER_SOURCE), compiled by the compiler TVM links with: the CPU
runtime runs a step's kernels through it in one call (graphllm/runtime/program.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GraphLLMError
from .target import FATBIN_ARCHS, detect_target, tvm_target

if TYPE_CHECKING:
    from tvm.runtime import Executable
    from tvm.tirx import PrimFunc

_FATBIN_MAGIC = 0xBA55ED50
DRIVER_SOURCE = Path(__file__).with_name("driver.c")  # part of the build cache key (runtime/builds.codegen_hash)


def build_module(funcs: Mapping[str, PrimFunc], target: Mapping[str, object] | None = None) -> Executable:
    """Compile named PrimFuncs into one module for `target` (default: this host); return the Executable."""
    import tvm

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(tvm_target(target or detect_target())))


def cuda_source(executable: Executable) -> str:
    """The CUDA C that TVM generated for a CUDA build's kernels."""
    (device,) = [m for m in executable.mod.imports if m.kind == "cuda"]
    return device.inspect_source("cuda")


def source_digest(source: str) -> str:
    """The identity of a CUDA source: the runtime hands a fatbin over only for the source it was compiled from."""
    return hashlib.sha256(source.encode()).hexdigest()


def compile_fatbin(source: str, archs: Sequence[str], options: Sequence[str] = ()) -> tuple[bytes, str]:
    """Compile CUDA C with nvcc into a fatbin holding SASS for each arch (and PTX of the newest, for later GPUs);
    return (the fatbin, nvcc's diagnostics: with ``-Xptxas -v`` in options, each kernel's registers and spills)."""
    nvcc = shutil.which("nvcc") or shutil.which(str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"))
    if nvcc is None:
        raise GraphLLMError("nvcc not found: compiling for CUDA needs the CUDA 13 toolkit's nvcc on PATH (or CUDA_HOME)")
    codes = [f"-gencode=arch=compute_{a[3:]},code=sm_{a[3:]}" for a in archs]
    newest = archs[-1][3:]
    codes.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    with tempfile.TemporaryDirectory(prefix="graphllm-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(source)
        done = subprocess.run([nvcc, "--fatbin", "-O3", *codes, *options, "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise GraphLLMError(f"nvcc failed to compile the generated CUDA kernels: "
                                f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        return out.read_bytes(), done.stderr


def fatbin_entries(fatbin: bytes) -> list[tuple[str, int]]:
    """What a fatbin holds: ("sass" | "ptx", arch number) per entry (read from its headers, as cuobjdump lists them)."""
    magic, _, header, size = struct.unpack_from("<IHHQ", fatbin, 0)
    if magic != _FATBIN_MAGIC:
        raise ValueError("not a CUDA fatbin")
    entries, offset = [], header
    while offset < header + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, offset)
        entries.append(({1: "ptx", 2: "sass"}.get(kind, str(kind)), struct.unpack_from("<I", fatbin, offset + 28)[0]))
        offset += entry_header + payload
    return entries


def build_fatbin(executable: Executable, target: Mapping[str, object]) -> tuple[bytes, str]:
    """A CUDA build's fatbin for the target's archs and the digest of the source it was compiled from."""
    source = cuda_source(executable)
    fatbin, _ = compile_fatbin(source, list(target[FATBIN_ARCHS]))
    return fatbin, source_digest(source)


def export_module(executable: Executable, path: str | os.PathLike) -> Path:
    """Write a built module with the step driver linked in as a shared library (atomically, so readers never see
    half a file)."""
    import tvm_ffi.libinfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.so")
    executable.export_library(str(tmp), addons=[str(DRIVER_SOURCE)],
                              options=["-O2", f"-I{tvm_ffi.libinfo.find_include_path()}",
                                       f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}"])
    os.replace(tmp, path)
    return path
