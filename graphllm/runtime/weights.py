"""The weights mapping both loaders return: HF name -> float32, decoded on each access.

Executors read each weight once (and keep their own packed copy), so nothing is cached here:
a second float32 copy of every tensor would only double the memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


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
