"""Weight and buffer layouts shared by the code generator and the runtime (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALIGNMENT = 64  # bytes; compiled kernels assume (and do not check) this alignment


def aligned_empty(shape: int | Sequence[int], dtype: str | np.dtype = "float32") -> np.ndarray:
    """Return an uninitialised C-contiguous numpy array whose data starts on a 64-byte boundary."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)
