"""Tensor types of graph values: a dtype and a shape whose dims are ints or symbols.

Symbols: ``T`` is the number of tokens in a step (all sequences packed together), ``B`` the number
of sequences in the step. One graph (and one compiled build) serves every value of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .qformats import qformat

Dim = Union[int, str]

TOKENS = "T"
SEQS = "B"
DTYPES = ("float32", "float16", "bfloat16", "int32", "int64")
_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int32": "i32", "int64": "i64"}
_LONG = {v: k for k, v in _SHORT.items()}


@dataclass(frozen=True)
class TensorType:
    """The type of one graph value."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES and qformat(self.dtype) is None:
            raise ValueError(f"unknown dtype {self.dtype!r}")

    @property
    def quantized(self) -> bool:
        """A block-quantized weight (see qformats): logical shape, raw block storage."""
        return qformat(self.dtype) is not None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: tuple[Dim, ...]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with every symbol replaced by its size in ``sizes``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def __str__(self) -> str:
        return f"{_SHORT.get(self.dtype, self.dtype)}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def parse(text: str) -> "TensorType":
        """Inverse of ``str()``: ``f32[T,576]`` -> TensorType(("T", 576), "float32"), ``q4_1g128[N,K]`` a block format."""
        short, _, rest = text.partition("[")
        body = rest.rstrip("]")
        dims = tuple(int(d) if d.lstrip("-").isdigit() else d for d in body.split(",") if d)
        fmt = qformat(short)
        if fmt is not None and short != (spelled := fmt.spelling):
            raise ValueError(f"the block format {short} is spelled {spelled}")
        return TensorType(dims, _LONG.get(short, short))


def fmt_shape(shape: tuple[Dim, ...]) -> str:
    """A shape as users read it: [T,576]."""
    return "[" + ",".join(str(d) for d in shape) + "]"
