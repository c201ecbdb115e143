"""The weights mapping both loaders return: HF name -> float32, decoded on each access.

Executors read each weight once (and keep their own packed copy), so nothing is cached here:
a second float32 copy of every tensor would only double the memory.
16-bit float weights are numpy float16 or ml_dtypes.bfloat16 arrays (numpy has no bfloat16).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

HALF_DTYPES = ("float16", "bfloat16")
FLOAT_DTYPES = ("float32", *HALF_DTYPES)


def numpy_float(dtype: str) -> np.dtype | None:
    """The numpy dtype of a graph float type (float32, float16, ml_dtypes' bfloat16), None for any other type.

    ml_dtypes (2.6 MiB) is imported for bfloat16 only: a run of a float16 or quantized model never loads it.
    """
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype) if dtype in FLOAT_DTYPES else None


def to_float_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """values as the graph dtype float32, float16 or bfloat16 (rounded to nearest even; no copy if already so)."""
    return np.asarray(values, dtype=numpy_float(dtype))


class TensorWeights(Mapping[str, np.ndarray]):
    """Lazily decoded tensors; ``tensors`` gives each one's header (shape, qformat) without reading it."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name].load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors
