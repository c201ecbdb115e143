"""Where a tuning database lives and the thread count its records are keyed by: importable without the compiler or
the graph (a warm start keys on the database's state without loading it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..host import physical_cores
from ..io.download import graphllm_home

DB_FILE = "knobs.json"
TuningChoice = Union[bool, str, os.PathLike]  # True: the default database, False: none, else a database folder


def default_db_dir() -> Path:
    """Where `graphllm tune` keeps its database unless told otherwise."""
    return graphllm_home() / "tuning"


def db_dir(choice: TuningChoice) -> Path | None:
    """The database folder a tuning choice names (None for False)."""
    if choice is False:
        return None
    return default_db_dir() if choice is True else Path(choice).expanduser()


def resolved_threads(threads: int | None) -> int:
    """The kernel thread count an executor will use for `threads` (None: TVM_NUM_THREADS, else physical cores)."""
    env = os.environ.get("TVM_NUM_THREADS", "")
    return threads or (int(env) if env.isdigit() and int(env) > 0 else physical_cores())
