"""Facts about this host that both the compiler and the runtime need: CPU flags, cores, TVM version."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from pathlib import Path


def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags of /proc/cpuinfo (empty off Linux), the ISA ground truth."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def usable_cores() -> int:
    """CPU cores (hyper-threads included) this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Return the number of physical cores this process may run on (hyper-threads not counted)."""
    usable = usable_cores()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            core_id = value.strip()
        elif not key and core_id:
            cores.add((physical_id, core_id))
            physical_id = core_id = ""
    return max(1, min(usable, len(cores) or usable))


def tvm_version() -> str:
    """The installed apache-tvm version, without importing TVM: from the name of the wheel's dist-info folder beside
    the package (``apache_tvm-<version>.dist-info``, the wheel format's rule), else from importlib.metadata, which
    loads 1.8 MiB of metadata parsers into the process (every run asks: the caches are keyed by TVM's version)."""
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        found = list(Path(list(spec.submodule_search_locations)[0]).parent.glob("apache_tvm-*.dist-info"))
        if len(found) == 1:
            return found[0].name.removeprefix("apache_tvm-").removesuffix(".dist-info")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        return "unknown"


def return_freed_memory() -> None:
    """Hand the heap that was freed back to the OS (glibc's malloc_trim): after a load, its temporaries would
    otherwise stay resident while nothing reuses them. Nothing to do with another C library."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
