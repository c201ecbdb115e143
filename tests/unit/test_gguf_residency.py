"""Reading a GGUF tensor never makes the file mapping's pages resident: a loader that packs every weight holds its
packed copy only, not the file's pages too (peak RSS ~ packed weights, not file + packed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphllm.io.gguf import open_gguf, unpermute_rows

FIXTURE = Path(__file__).parents[1] / "fixtures" / "gguf_kquant" / "tiny_llama_k.Q4_K_M.gguf"
SMAPS = Path("/proc/self/smaps")

pytestmark = pytest.mark.skipif(not SMAPS.exists(), reason="needs Linux's /proc/self/smaps")


def resident_kb(array: np.ndarray) -> int:
    """Resident kB (smaps Rss) of the mapping that holds `array`'s first byte."""
    address, inside = array.ctypes.data, False
    for line in SMAPS.read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            inside = start <= address < end
        elif inside and head[0] == "Rss:":
            return int(head[1])
    raise AssertionError("no mapping holds the array")


def test_reading_every_tensor_makes_none_of_the_file_resident() -> None:
    model = open_gguf(FIXTURE)
    tensors = [t for t in model.tensors.values() if t.data.nbytes]
    mapping = tensors[0].source.array
    copies = [t.raw() for t in tensors]
    assert resident_kb(mapping) == 0
    for t, raw in zip(tensors, copies):  # the copies are the file's bytes (rows un-permuted where needed)
        assert np.array_equal(raw if t.n_head is None else raw[np.argsort(unpermute_rows(len(raw), t.n_head))], t.data)
    assert resident_kb(mapping) > 0  # reading through the mapping (as a zero-copy view would) is what this sees

