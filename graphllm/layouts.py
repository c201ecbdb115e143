"""Weight layouts the kernels read: 64-byte-aligned arrays and the packers that re-lay weights out once at load.

numpy only (no TVM): the runtime loads and packs weights through this module without importing codegen,
and the kernels take their layout constants from here, so each layout is written once.

Float Linear weights (`pack_weight`): HF [N, K] -> [N/nb, K, nb] panels (nb = PANEL = 16 when N allows:
two AVX2 float32 vectors), stored as float32, float16 or bfloat16 (held as its uint16 bits, because
numpy and DLPack have no bfloat16 array).

Block-quantized weights (`pack_qweight`, same bytes as the raw blocks): output rows in blocks of
QROWS = 16; for each (row block, K block of G elements) one uint32 record:
- W = G / P code words per row (P = 32 / bits codes per word), stored [W][QROWS] (a word index
  gives 16 rows = two AVX2 vectors): slot j of word w, bits [bits*j, bits*(j+1)), holds element
  j*W + w of the block as the unsigned code u = q - lo (q: what the format decodes to with a unit
  scale, lo: its smallest code, e.g. -8 for q4_0, -128 for q8_0);
- then the QROWS fp16 scales d and (q4_1) the QROWS fp16 mins m, as stored in the blocks.
A weight is d * (u + lo) (+ m): the format's own value.

Sub-block formats (q5_0, q5_1, q4_k, q5_k, q6_k; `pack_subblocks`): per (row block, block) one uint32
record: for each sub-block, for each code plane (the codes' low 4 bits, then for 5- and 6-bit codes
their high 1 or 2 bits, worth 16 each), [W words][QROWS] with W = sub * plane_bits / 32 (slot j of
word w holds element j*W + w of the sub-block); then the sub-blocks' integer scales and (K-quants)
mins as bytes [nsub][QROWS] each, unpacked from their 6-bit packing once here; then the fp16 heads
(d, and m or dmin) [QROWS] each. q5_0/q5_1/q6_k keep the file's size, q4_k/q5_k grow by 4 bytes a
block (2.8%, 2.3%).

A plan names each weight's packer (`Kernel.packs`); ``name:ARG`` (e.g. ``qlinear:q4_1``) calls the
packer as fn(w, ARG).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graphllm.dsl.qformats import QFormat, SubBlocks, qformat

ALIGNMENT = 64  # bytes; compiled kernels assume (and do not check) this alignment


def aligned_empty(shape: int | Sequence[int], dtype: str | np.dtype = "float32") -> np.ndarray:
    """Return an uninitialised C-contiguous numpy array whose data starts on a 64-byte boundary."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


# ------------------------------------------------------------------ float Linear panels

PANEL = 16  # columns of a packed float panel when N allows: two AVX2 float32 vectors
_PANELS = (PANEL, 8, 4, 2, 1)
STORAGE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}  # weight dtype -> stored array dtype


def pack_block(n: int) -> int:
    """Return the column block nb used for N = n outputs: the largest of 16, 8, 4, 2, 1 dividing n."""
    return next(b for b in _PANELS if n % b == 0)


def stored_values(w: np.ndarray, dtype: str) -> np.ndarray:
    """Return w as the kernels store `dtype` (float16 rounds to nearest even; bfloat16 as its uint16 bits)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(w, dtype=ml_dtypes.bfloat16).view(np.uint16)
    return np.asarray(w, dtype=STORAGE[dtype])


def pack_weight(w: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Repack an HF Linear weight [N, K] into the kernels' 64-byte-aligned [N/nb, K, nb] of `dtype`."""
    if w.ndim != 2:
        raise ValueError(f"Linear weight must be [N, K], got shape {w.shape}")
    n, k = w.shape
    nb = pack_block(n)
    out = aligned_empty((n // nb, k, nb), STORAGE[dtype])
    out[...] = stored_values(w, dtype).reshape(n // nb, nb, k).transpose(0, 2, 1)
    return out


def packer_name(dtype: str) -> str:
    """Return the plan's name of the packing a `dtype` Linear weight needs (linear_blocks[:dtype])."""
    return "linear_blocks" if dtype == "float32" else f"linear_blocks:{dtype}"


# ------------------------------------------------------------------ block-quantized records

QROWS = 16  # output rows per packed row block: two AVX2 float32 vectors
MAX_GROUP = 1024  # largest group size with a registered packer
_PACK_ELEMENTS = 1 << 19  # weights packed at a time: bounds the packers' temporaries (~20 bytes a weight) to ~10 MB


@dataclass(frozen=True)
class QLayout:
    """How one block format is laid out for the kernels (see the module docstring)."""

    fmt: QFormat
    lo: int

    @property
    def bits(self) -> int:
        """Bits per code."""
        return self.fmt.bits

    @property
    def per_word(self) -> int:
        """P: codes per 32-bit word."""
        return 32 // self.fmt.bits

    @property
    def words(self) -> int:
        """W: words per row and block."""
        return self.fmt.group // self.per_word

    @property
    def halves(self) -> int:
        """fp16 header fields per block: d, and m for formats with a min."""
        return (self.fmt.block_bytes - self.fmt.group * self.fmt.bits // 8) // 2

    @property
    def record(self) -> int:
        """uint32 words per (row block, K block) record."""
        return QROWS * self.words + QROWS * self.halves // 2

    def pack_name(self) -> str:
        """The registered packer of this format."""
        return f"qlinear:{self.fmt.name}"


@functools.lru_cache(maxsize=None)
def qlayout(dtype: str) -> QLayout:
    """The kernel layout of a block format; NotImplementedError for the group sizes not supported."""
    fmt = qformat(dtype)
    if fmt is None or fmt.sub_blocks is not None:
        raise NotImplementedError(f"{dtype} is not a single-scale block format (sub-block formats: sublayout)")
    per_word = 32 // fmt.bits
    if fmt.group % per_word or fmt.group > MAX_GROUP:
        raise NotImplementedError(
            f"{dtype}: quantized kernels need a group size that is a multiple of {per_word} "
            f"(whole 32-bit words of {fmt.bits}-bit codes) and at most {MAX_GROUP}; got {fmt.group}")
    codes = _codes(fmt, np.repeat(np.arange(256, dtype=np.uint8)[:, None], fmt.block_bytes, axis=1))
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo >= 1 << fmt.bits:
        raise NotImplementedError(f"{dtype}: codes {lo}..{hi} do not fit {fmt.bits} bits")
    return QLayout(fmt, lo)


def _codes(fmt: QFormat, blocks: np.ndarray) -> np.ndarray:
    """The integer codes q of raw blocks [n, block_bytes]: the format's decoding with d = 1 (and m = 0)."""
    halves = (fmt.block_bytes - fmt.group * fmt.bits // 8) // 2
    probe = np.array(blocks, dtype=np.uint8, copy=True)
    probe[:, :2 * halves] = np.array([1.0] + [0.0] * (halves - 1), np.float16).view(np.uint8)
    return fmt.decode(probe)


def _raw_blocks(raw: np.ndarray, fmt: QFormat) -> tuple[np.ndarray, int, int]:
    """(raw, N, blocks per row) of a weight's raw blocks; ValueError when they are not uint8 [N, K/G * block_bytes]."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] % fmt.block_bytes:
        raise ValueError(f"{fmt.name} weight must be raw blocks uint8 [N, K/{fmt.group}*{fmt.block_bytes}], "
                         f"got {raw.dtype} {raw.shape}")
    return raw, raw.shape[0], raw.shape[1] // fmt.block_bytes


def _chunk_rows(k: int) -> int:
    """Rows a packer works on at a time for rows of k weights: whole row blocks, about _PACK_ELEMENTS weights."""
    return max(1, _PACK_ELEMENTS // (k * QROWS)) * QROWS


def pack_qweight(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw blocks uint8 [N, K/G * block_bytes] -> the kernels' 64-byte-aligned uint32 [ceil(N/16), K/G, record]."""
    lay = qlayout(dtype)
    fmt, W, H, P = lay.fmt, lay.words, lay.halves, lay.per_word
    raw, n, kb = _raw_blocks(raw, fmt)
    out = aligned_empty((-(-n // QROWS), kb, lay.record), "uint32")
    step = _chunk_rows(kb * fmt.group)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        rows, nbc = r1 - r0, -(-(r1 - r0) // QROWS)
        blocks = raw[r0:r1].reshape(rows * kb, fmt.block_bytes)
        codes = (_codes(fmt, blocks) - lay.lo).astype(np.uint32).reshape(rows, kb, P, W)
        words = np.zeros((nbc * QROWS, kb, W), np.uint32)
        for j in range(P):
            words[:rows] |= codes[:, :, j, :] << np.uint32(fmt.bits * j)
        halves = np.zeros((nbc * QROWS, kb, H), np.uint16)
        halves[:rows] = blocks[:, :2 * H].view(np.uint16).reshape(rows, kb, H)
        dst = out[r0 // QROWS:r0 // QROWS + nbc]
        dst[:, :, :QROWS * W] = words.reshape(nbc, QROWS, kb, W).transpose(0, 2, 3, 1).reshape(nbc, kb, QROWS * W)
        dst[:, :, QROWS * W:] = np.ascontiguousarray(
            halves.reshape(nbc, QROWS, kb, H).transpose(0, 2, 3, 1)).reshape(nbc, kb, H * QROWS).view(np.uint32)
    return out


# ------------------------------------------------------------------ sub-block formats (q5_0, q5_1, K-quants)


@dataclass(frozen=True)
class SubLayout:
    """How a sub-block format is laid out for the kernels (see the module docstring)."""

    fmt: QFormat

    @property
    def spec(self) -> SubBlocks:
        """The format's sub-block structure."""
        return self.fmt.sub_blocks

    @property
    def planes(self) -> tuple[tuple[int, int], ...]:
        """(bits, shift) of each code plane: the low 4 bits, then the high bits (worth 2^4)."""
        return ((4, 0),) if self.spec.bits == 4 else ((4, 0), (self.spec.bits - 4, 4))

    def plane_words(self, plane: int) -> int:
        """W: words per row of one sub-block in a plane."""
        return self.spec.sub * self.planes[plane][0] // 32

    def plane_offset(self, plane: int) -> int:
        """Word offset (in rows of QROWS words) of a plane inside one sub-block's codes."""
        return sum(self.plane_words(p) for p in range(plane))

    @property
    def sub_words(self) -> int:
        """Code words per row of one sub-block, all planes."""
        return self.plane_offset(len(self.planes))

    @property
    def scale_fields(self) -> int:
        """Byte fields per sub-block and row: 0, the scale, or the scale and the min."""
        return (1 if self.spec.scales else 0) + (1 if self.spec.mins == "dmin" else 0)

    @property
    def scales_at(self) -> int:
        """Word offset of the scale bytes in a record."""
        return self.spec.nsub * self.sub_words * QROWS

    @property
    def heads_at(self) -> int:
        """Word offset of the fp16 heads in a record."""
        return self.scales_at + self.scale_fields * self.spec.nsub * QROWS // 4

    @property
    def record(self) -> int:
        """uint32 words per (row block, block) record."""
        return self.heads_at + self.spec.heads * QROWS // 2

    def pack_name(self) -> str:
        """The registered packer of this format."""
        return f"qsub:{self.fmt.name}"


@functools.lru_cache(maxsize=None)
def sublayout(dtype: str) -> SubLayout:
    """The kernel layout of a sub-block format (q5_0, q5_1, q4_k, q5_k, q6_k)."""
    fmt = qformat(dtype)
    if fmt is None or fmt.sub_blocks is None:
        raise NotImplementedError(f"{dtype} is not a sub-block format")
    return SubLayout(fmt)


def pack_subblocks(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw blocks uint8 [N, K/G * block_bytes] -> the kernels' 64-byte-aligned uint32 [ceil(N/16), K/G, record]."""
    lay = sublayout(dtype)
    fmt, spec = lay.fmt, lay.spec
    raw, n, kb = _raw_blocks(raw, fmt)
    out = aligned_empty((-(-n // QROWS), kb, lay.record), "uint32")
    step = _chunk_rows(kb * fmt.group)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        rows, nbc = r1 - r0, -(-(r1 - r0) // QROWS)
        u, scales, mins, heads = spec.parts(raw[r0:r1].reshape(rows * kb, fmt.block_bytes))
        u = u.reshape(rows, kb, spec.nsub, spec.sub).astype(np.uint32)
        words = np.zeros((nbc * QROWS, kb, spec.nsub, lay.sub_words), np.uint32)
        for p, (bits, shift) in enumerate(lay.planes):
            W, at = lay.plane_words(p), lay.plane_offset(p)
            codes = ((u >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).reshape(rows, kb, spec.nsub, 32 // bits, W)
            for j in range(32 // bits):
                words[:rows, :, :, at:at + W] |= codes[:, :, :, j, :] << np.uint32(bits * j)
        dst = out[r0 // QROWS:r0 // QROWS + nbc]
        dst[:, :, :lay.scales_at] = words.reshape(nbc, QROWS, kb, -1).transpose(0, 2, 3, 1).reshape(nbc, kb, -1)
        fields = [f for f in (scales, mins if spec.mins == "dmin" else None) if f is not None]
        if fields:
            sb = np.zeros((nbc * QROWS, kb, len(fields), spec.nsub), np.uint8)
            sb[:rows] = np.stack([f.view(np.uint8) for f in fields], axis=1).reshape(rows, kb, len(fields), spec.nsub)
            dst[:, :, lay.scales_at:lay.heads_at] = np.ascontiguousarray(
                sb.reshape(nbc, QROWS, kb, -1).transpose(0, 2, 3, 1)).reshape(nbc, kb, -1).view(np.uint32)
        hb = np.zeros((nbc * QROWS, kb, spec.heads), np.uint16)
        hb[:rows] = heads.view(np.uint16).reshape(rows, kb, spec.heads)
        dst[:, :, lay.heads_at:] = np.ascontiguousarray(
            hb.reshape(nbc, QROWS, kb, -1).transpose(0, 2, 3, 1)).reshape(nbc, kb, -1).view(np.uint32)
    return out


# ------------------------------------------------------------------ the packers a plan names

PACKERS: dict[str, Callable[..., np.ndarray]] = {"linear_blocks": pack_weight, "qlinear": pack_qweight,
                                                  "qsub": pack_subblocks}


def get_packer(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The re-layout a plan names, its argument (after ':') bound; ValueError for a name no packer has."""
    base, _, arg = name.partition(":")
    fn = PACKERS.get(base)
    if fn is None:
        raise ValueError(f"no weight packer named {base!r} (known: {', '.join(sorted(PACKERS))})")
    return functools.partial(fn, dtype=arg) if arg else fn
