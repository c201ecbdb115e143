"""Write F32, F16, BF16 and Q8_0 copies of a GGUF (same metadata, tensors re-encoded) for comparisons.

The default model ships only as Q4_1; peers.md compares llama.cpp on F32/F16/Q8_0 files derived
from it, and this makes the same files with the `gguf` package (tensor rows stay in the file's
order, so llama.cpp's Q/K permutation is kept). Usage:
    python benchmarks/make_gguf_variants.py SRC.gguf OUT_DIR [--types F32 F16 BF16 Q8_0]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants

from graphllm.io.gguf import dequantize_raw

SKIP = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.file_type"}
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7}


def copy_metadata(reader: GGUFReader, writer: GGUFWriter, keep: Callable[[str], bool]) -> None:
    """Copy the reader's key/value fields whose key passes `keep` to the writer, with their GGUF types."""
    for key, field in reader.fields.items():
        if keep(key):
            vtype = field.types[0]
            sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub)


def write_variant(src: Path, out: Path, kind: str) -> Path:
    """One re-encoded copy: matrices in `kind`, 1-D tensors float32 (as llama.cpp keeps norms)."""
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(out), arch)
    copy_metadata(reader, writer, lambda key: key not in SKIP)
    writer.add_file_type(FILE_TYPES[kind])
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = dequantize_raw(t.data.view(np.uint8).reshape(shape[0] if len(shape) > 1 else 1, -1),
                                t.tensor_type).reshape(shape).astype(np.float32)
        if len(shape) == 1 or kind == "F32":
            writer.add_tensor(t.name, values)
        elif kind == "F16":
            writer.add_tensor(t.name, values.astype(np.float16))
        elif kind == "BF16":  # rounded to nearest even
            writer.add_tensor(t.name, quants.quantize(values, QT.BF16), raw_dtype=QT.BF16)
        else:
            writer.add_tensor(t.name, quants.quantize(values, QT.Q8_0), raw_dtype=QT.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--types", nargs="+", default=list(FILE_TYPES), choices=list(FILE_TYPES))
    a = ap.parse_args()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for kind in a.types:
        print(write_variant(a.src, a.out_dir / f"{a.src.stem.rsplit('.', 1)[0]}.{kind}.gguf", kind))


if __name__ == "__main__":
    main()
