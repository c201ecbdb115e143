"""The tuning database: tuned knob values per (target, threads, kernel signature, versions), and their application.

A database is a folder (default GRAPHLLM_HOME/tuning) holding one JSON file, `knobs.json`:

    {"format": 1,
     "kernels": {RECORD_KEY: {"identity": IDENTITY, "kernel": "cpu:fusedlinear_4c7795655089", "op": ..., "shape": ...,
                              "knobs": {...}, "judged": {knob: "kernel" | "step"}, "default_s": ..., "tuned_s": ...,
                              "candidates": ..., "model": ...}},
     "models": {MODEL_KEY: {"identity": IDENTITY, "model": ..., "dtype": ..., "default": {...}, "tuned": {...}}}}

IDENTITY = {"target": the TVM target dict, "features": hash of the CPU flags, "threads", "graphllm", "tvm"}; a
record is applied only when its identity equals this host's for the thread count in use, and its knob values are
still valid for the kernel's template (`knobs.resolve`). `tuned_knobs` gives make_plan {request key: knobs}.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..dsl.graph import Graph
from ..errors import GraphLLMError
from ..host import cpu_flags, tvm_version
from .knobs import KnobError, resolve
from .compile import kernel_requests
from .lower import LowerRequest, knobs_of
from .target import target_kind
from .tuning_paths import DB_FILE, TuningChoice, db_dir, resolved_threads

DB_FORMAT = 1


def identity(target: dict[str, Any], threads: int) -> dict[str, Any]:
    """What a tuned value is valid for: target, CPU features, thread count, graphllm and TVM versions."""
    features = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    return {"target": dict(target), "features": features, "threads": int(threads), "graphllm": __version__,
            "tvm": tvm_version()}


def kernel_signature(req: LowerRequest, kind: str) -> str:
    """A kernel's signature in the database: target kind and request key."""
    return f"{kind}:{req.key()}"


def _key(ident: dict[str, Any], name: str) -> str:
    """The record key of `name` (a kernel signature or a model) under an identity."""
    text = json.dumps([ident, name], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class TuningDB:
    """One database folder, read whole and written atomically."""

    folder: Path
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / DB_FILE

    @staticmethod
    def load(folder: str | os.PathLike) -> TuningDB:
        """The database in `folder` (empty when there is none); an unreadable one is a GraphLLMError."""
        db = TuningDB(Path(folder))
        if db.path.is_file():
            db.merge(read_records(db.path))
        return db

    def merge(self, data: dict[str, Any]) -> int:
        """Add the records of database JSON data, keyed by what they hold (same key: the new one wins); return how many."""
        for record in data["kernels"].values():
            self.put_kernel(record)
        for record in data["models"].values():
            self.put_model(record)
        return len(data["kernels"]) + len(data["models"])

    def to_json(self) -> dict[str, Any]:
        return {"format": DB_FORMAT, "kernels": self.kernels, "models": self.models}

    def save(self) -> Path:
        """Write the database (to a temporary file renamed over the old one: readers never see half)."""
        write_json(self.path, self.to_json())
        return self.path

    def kernel(self, ident: dict[str, Any], signature: str) -> dict[str, Any] | None:
        """The record of a kernel signature under an identity, if any (keys are recomputed on load: never another's)."""
        record = self.kernels.get(_key(ident, signature))
        return record if record is not None and record["identity"] == ident else None

    def put_kernel(self, record: dict[str, Any]) -> None:
        """Add or replace a kernel record (it carries its identity and signature)."""
        self.kernels[_key(record["identity"], record["kernel"])] = record

    def put_model(self, record: dict[str, Any]) -> None:
        """Add or replace a model's before/after measurement (it carries its identity, model and dtype)."""
        self.models[_key(record["identity"], f"{record['model']}|{record['dtype']}")] = record


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_records(path: str | os.PathLike) -> dict[str, Any]:
    """Database JSON data from a file; a missing, malformed or other-format one is a GraphLLMError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise GraphLLMError(f"{path}: not a graphllm tuning database ({e})") from None
    if not isinstance(data, dict) or data.get("format") != DB_FORMAT:
        raise GraphLLMError(f"{path}: tuning database format {data.get('format') if isinstance(data, dict) else None}, "
                            f"but this graphllm reads format {DB_FORMAT}")
    if not isinstance(data.get("kernels"), dict) or not isinstance(data.get("models"), dict):
        raise GraphLLMError(f"{path}: malformed tuning database (no kernels/models tables)")
    return data


@dataclass(frozen=True)
class Tuned:
    """Tuned knob values for a graph: {request key: knobs}, and the one-line note that says so (or None)."""

    knobs: dict[str, dict[str, Any]]
    note: str | None = None


def tuned_knobs(graph: Graph, target: dict[str, Any], threads: int | None, choice: TuningChoice) -> Tuned:
    """The database's knob values for the graph's kernels on this target and thread count (none for another's)."""
    folder = db_dir(choice)
    if folder is None or not (folder / DB_FILE).is_file():
        return Tuned({})
    db = TuningDB.load(folder)
    kind = target_kind(target)
    ident = identity(target, resolved_threads(threads))
    found: dict[str, dict[str, Any]] = {}
    tunable = 0
    for key, (req, _) in kernel_requests(graph).items():
        try:
            declared = knobs_of(req, kind)
        except NotImplementedError:
            continue
        tunable += bool(declared)
        record = db.kernel(ident, kernel_signature(req, kind))
        if record is None or not record["knobs"]:
            continue
        try:
            resolve(declared, record["knobs"], req.op)
        except KnobError:  # the kernel template changed since: its record no longer applies
            continue
        found[key] = dict(record["knobs"])
    note = f"using tuned knobs for {len(found)} of {tunable} kernels from {folder / DB_FILE}" if found else None
    return Tuned(found, note)
