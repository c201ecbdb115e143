"""Warm starts: a model's next start opens its cached build directly, with no graph, model reader or networkx.

A cold start (the compiled CPU executor from the build cache) reads the model, traces its graph, runs the passes,
finds or compiles the build and packs the weights. What it learned is kept in GRAPHLLM_HOME/starts/<key>: the
build's folder and graph key, the model's config, generation config, file type and notes, its tokenizer, and for
each weight the kernels take as stored, where its bytes lie in the model's files (checked byte for byte against
the loaded weight before it is recorded; a derived one is saved beside the record). The key is everything that
may change any of it: the model's files (path, size, mtime), the graph options, graphllm's sources and version,
TVM's version, the CPU's target, the thread count and the tuning database's state. A record that fails its checksum is
removed (one warning) and the start is cold, which writes it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..codegen.tuning_paths import DB_FILE, TuningChoice, db_dir, resolved_threads
from ..dsl.types import TensorType
from ..errors import ModelLoadError
from ..host import tvm_version
from ..io.cache import FileSum, digest, read_checked_json, tree_digest, write_checked_json
from ..io.download import graphllm_home
from ..passes.kv_dtype import DEFAULT_KV_DTYPE
from ..plan import PackedWeightValue, WeightValue
from .builds import host_target, packed_dir
from .executor import CompiledExecutor

if TYPE_CHECKING:
    from ..io.loader import LoadedModel, WeightSource
    from ..io.tokenizer import Tokenizer
    from ..pipeline import GraphOptions

log = logging.getLogger(__name__)

START_FORMAT = 1
RECORD_FILE = "start.json"
TOKENIZER_FILE = "tokenizer.json"
PACKAGE = Path(__file__).parents[1]
_SOURCE_SUFFIXES = (".py", ".c", ".h", ".lark")


_RECORD_FIELDS = {"build": str, "graph_key": str, "config": dict, "generation_config": dict, "file_type": str,
                  "model": str, "notes": list, "weights": dict, "tokenizer": (str, type(None))}


class ColdStart(ModelLoadError):
    """A warm start that cannot finish (its build or a packed weight has gone): the caller starts cold."""


def sources_hash() -> str:
    """Hash of graphllm's own sources (3 ms): any change to a model description, pass or kernel makes starts cold."""
    return tree_digest(PACKAGE, _SOURCE_SUFFIXES, 24)


def _files_ident(path: Path) -> list[list[Any]]:
    """Path, size and mtime of a model file, or of every file directly in a model folder."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def start_key(model: Path, options: GraphOptions, threads: int | None, tuned: TuningChoice) -> str | None:
    """The key of a start of ``model`` with these options (None when such a start is never warm: text IR, IR dumps)."""
    if options.ir is not None or options.after is not None or options.print_ir_after_all is not None:
        return None
    try:
        ident = _files_ident(model)
        custom = None
        if options.custom is not None:
            source = Path(options.custom)
            custom = [str(source.resolve()), digest(source.read_bytes())]
        database = db_dir(tuned)
        db_file = database / DB_FILE if database is not None else None
        db_state = [db_file.stat().st_size, db_file.stat().st_mtime_ns] if db_file and db_file.is_file() else None
    except OSError:
        return None  # the cold start reports what cannot be read
    parts = [START_FORMAT, ident, custom, options.dtype, options.pipeline(), options.kv_dtype or DEFAULT_KV_DTYPE,
             __version__, tvm_version(), sources_hash(), host_target(), resolved_threads(threads),
             str(database), db_state]
    return digest(json.dumps(parts), 24)


def starts_dir() -> Path:
    """Where warm-start records live."""
    return graphllm_home() / "starts"


class FileWeights(Mapping[str, np.ndarray]):
    """A warm start's weights: those the kernels take as stored, read from their place in the model's files or
    from the record; the packed ones only by name and type (the build's packed copies hold them)."""

    def __init__(self, folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.folder, self.entries = folder, entries
        self.types = {name: TensorType(tuple(e["shape"]), e["dtype"]) for name, e in entries.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if "file" in entry:
            data = np.fromfile(entry["file"], np.uint8, count=entry["bytes"], offset=entry["offset"])
            if data.size != entry["bytes"]:
                raise ColdStart(f"{entry['file']} is shorter than when the start was recorded")
            return data.view(_numpy_dtype(entry["array_dtype"])).reshape(entry["array_shape"])
        if "saved" in entry:
            path = self.folder / entry["saved"]
            why = FileSum.from_json(entry["sum"]).mismatch(path)
            if why:
                raise ColdStart(why)
            return np.load(path, allow_pickle=False)
        raise ColdStart(f"the packed copy of {name} is not in the build cache")

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a loaded weight by its name (bfloat16 is ml_dtypes')."""
    from ..io.weights import numpy_float

    return numpy_float(name) or np.dtype(name)


@dataclass
class WarmStart:
    """A start record: what LLM.load needs of the model and its build, without reading either."""

    folder: Path
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def generation_config(self) -> dict[str, Any]:
        return self.data["generation_config"]

    @property
    def file_type(self) -> str:
        return self.data["file_type"]

    @property
    def model_path(self) -> Path:
        return Path(self.data["model"])

    @property
    def notes(self) -> list[str]:
        return list(self.data["notes"])

    def open(self, **executor_args: Any) -> CompiledExecutor:
        """The build's executor over the recorded weights; ColdStart when the build or a packed weight has gone."""
        build = graphllm_home() / "builds" / self.data["build"]
        if not build.is_dir():
            raise ColdStart(f"the build {build} has gone")
        weights = FileWeights(self.folder, self.data["weights"])
        executor = CompiledExecutor(build, weights, pack_cache=packed_dir(build, self.model_path), **executor_args)
        if executor.plan.graph_key != self.data["graph_key"]:
            raise ColdStart(f"the build {build} was replaced by another graph's")
        log.info("loaded the build from %s (warm start: %s)", build, self.folder)
        return executor

    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer as the cold start read it (None for a model without one); ColdStart when its copy
        is damaged (the record is removed: the caller reads the model's own)."""
        if self.data["tokenizer"] is None:
            return None
        from ..io.tokenizer import Tokenizer

        path = self.folder / TOKENIZER_FILE
        try:
            return Tokenizer.from_json(read_checked_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            discard(self.folder, f"its tokenizer cannot be read: {e}", "reading the model's")
            raise ColdStart(str(e)) from None


def find_start(key: str) -> WarmStart | None:
    """The record of ``key`` (None when there is none; a damaged one is removed with a warning)."""
    folder = starts_dir() / key
    try:
        data = read_checked_json((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        discard(folder, str(e))
        return None
    if data.get("format") != START_FORMAT:
        discard(folder, f"format {data.get('format')!r}, not {START_FORMAT}")
        return None
    wrong = [key for key, kind in _RECORD_FIELDS.items() if not isinstance(data.get(key), kind)]
    if wrong or not isinstance(data["config"].get("max_positions"), int):
        discard(folder, f"malformed: {', '.join(wrong) or 'config.max_positions'}")
        return None
    return WarmStart(folder, data)


def discard(folder: Path, why: str, instead: str = "starting cold") -> None:
    """Remove a warm-start record that cannot be used (graphllm's own cache entry), saying why."""
    warnings.warn(f"the warm-start record {folder} is unusable ({why}); {instead}")
    shutil.rmtree(folder, ignore_errors=True)


def save_start(key: str, model: LoadedModel, weights: WeightSource, executor: CompiledExecutor,
               notes: list[str], build: Path) -> None:
    """Record a cold start for the next one (see the module doc); an unwritable cache only costs the next start."""
    final = starts_dir() / key
    tmp = starts_dir() / f".{key}.{os.getpid()}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        entries = _weight_entries(tmp, weights, executor)
        if model.tokenizer is not None:
            write_checked_json(tmp / TOKENIZER_FILE, model.tokenizer.to_json())
        write_checked_json(tmp / RECORD_FILE, {
            "format": START_FORMAT, "build": build.name, "graph_key": executor.plan.graph_key,
            "config": executor.plan.config, "generation_config": model.generation_config,
            "file_type": model.file_type, "model": str(model.path), "notes": notes, "weights": entries,
            "tokenizer": TOKENIZER_FILE if model.tokenizer is not None else None})
        os.rename(tmp, final)
    except OSError:
        pass  # another process recorded it first, or the cache is read-only
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weight_entries(folder: Path, weights: WeightSource, executor: CompiledExecutor) -> dict[str, dict[str, Any]]:
    """Each used weight's type and, for those taken as stored, where its bytes are (file span, else saved here)."""
    plan = executor.plan
    entries: dict[str, dict[str, Any]] = {}
    for v, value in plan.values.items():
        if isinstance(value, PackedWeightValue) and v in executor.weights:
            source = plan.values[value.source]
            entries.setdefault(source.name, {"shape": list(source.type.shape), "dtype": source.type.dtype})
        elif isinstance(value, WeightValue) and v in executor.weights:
            loaded = executor.weights[v]
            entry: dict[str, Any] = {"shape": list(value.type.shape), "dtype": value.type.dtype,
                                     "array_shape": list(loaded.shape), "array_dtype": loaded.dtype.name}
            span = weights.span(value.name)
            if span is not None and _same_bytes(loaded, *span):
                entry |= {"file": str(span[0]), "offset": span[1], "bytes": span[2]}
            else:
                name = f"w{len(entries)}.npy"
                np.save(folder / name, loaded, allow_pickle=False)
                entry |= {"saved": name, "sum": FileSum.of(folder / name).to_json()}
            entries[value.name] = entry
    return entries


def _same_bytes(array: np.ndarray, path: Path, offset: int, nbytes: int) -> bool:
    """Whether the file holds exactly ``array``'s bytes at ``offset``."""
    if array.nbytes != nbytes:
        return False
    stored = np.fromfile(path, np.uint8, count=nbytes, offset=offset)
    return np.array_equal(stored, np.ascontiguousarray(array).reshape(-1).view(np.uint8))
