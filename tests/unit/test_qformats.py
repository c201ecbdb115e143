"""Block formats: decoding bit-exact with the gguf package, encoding round trips, other group sizes."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from graphllm.dsl.qformats import dequantize, qformat, quantize, random_blocks

rng = np.random.default_rng(3)


@pytest.mark.parametrize("name, qt", [("q8_0", QT.Q8_0), ("q4_0", QT.Q4_0), ("q4_1", QT.Q4_1)])
def test_decode_is_bit_exact_with_gguf_and_encode_matches(name, qt):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    raw = quantize(w, name)
    assert raw.shape == (8, qformat(name).row_bytes(128))
    ours = dequantize(raw, name, w.shape)
    assert np.array_equal(ours, quants.dequantize(raw, qt))
    try:
        theirs = quants.quantize(w, qt)
    except NotImplementedError:
        theirs = None
    if theirs is not None:
        assert np.array_equal(raw, theirs)
    step = np.abs(w).max() / (127 if name == "q8_0" else 7)
    assert np.abs(ours - w).max() <= step


@pytest.mark.parametrize("name", ["q8_0g64", "q4_0g128", "q4_1g16"])
def test_other_group_sizes(name):
    fmt = qformat(name)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    raw = quantize(w, name)
    assert raw.shape == (4, 256 // fmt.group * fmt.block_bytes)
    back = dequantize(raw, name, w.shape)
    for g in range(256 // fmt.group):
        block = w[:, g * fmt.group:(g + 1) * fmt.group]
        span = np.abs(block).max() if fmt.kind != "q4_1" else np.ptp(block, axis=1).max()
        assert np.abs(back[:, g * fmt.group:(g + 1) * fmt.group] - block).max() <= span / (127 if fmt.bits == 8 else 7)


def test_bad_shapes_and_names():
    assert qformat("float32") is None
    with pytest.raises(ValueError, match="group"):
        quantize(np.zeros((2, 40), np.float32), "q4_1")
    with pytest.raises(ValueError, match="even"):
        qformat("q4_1g7")


@pytest.mark.parametrize("dtype", ["q4_k", "q5_k", "q6_k", "q5_0", "q4_1"])
def test_random_blocks_are_finite_and_of_the_asked_size(dtype: str) -> None:
    """The tuner's random weights: every format, the K-quants too (random codes under plausible fp16 heads)."""
    values = dequantize(random_blocks((4, 512), dtype, np.random.default_rng(1)), dtype, (4, 512))
    assert np.isfinite(values).all() and 0.02 < values.std() < 0.08
