"""`graphllm tune`: search the model's kernel knobs on this machine and keep the winners in a database."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GraphLLMError
from .common import add_command, add_dtype_arg, add_kv_dtype_arg, add_model_arg, threads_arg

if TYPE_CHECKING:
    from ..codegen.tuning import TuningDB


def register(sub: argparse._SubParsersAction) -> None:
    """Add `tune` to the subcommands."""
    p = add_command(sub, "tune", "search the model's kernel knobs on this machine (used by compile/run/serve/bench)")
    add_model_arg(p)
    add_dtype_arg(p)
    add_kv_dtype_arg(p)
    p.add_argument("-t", "--threads", type=threads_arg, default=None,
                   help="kernel threads to tune for (default and -1: physical cores)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--budget-minutes", type=float, default=None,
                       help="stop searching after about this long (default: no limit)")
    limit.add_argument("--trials", type=int, default=None, help="candidates per kernel at most (default: no limit)")
    p.add_argument("--db", default=None, help="database folder (default: GRAPHLLM_HOME/tuning)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--report", action="store_true", help="print what the database holds for this host, then stop")
    action.add_argument("--export", metavar="FILE", default=None, help="write the database to FILE, then stop")
    action.add_argument("--import", dest="import_file", metavar="FILE", default=None,
                        help="merge FILE's records into the database, then stop")
    p.add_argument("--json", action="store_true", help="--report as JSON")
    p.set_defaults(func=tune_command)


def tune_command(a: argparse.Namespace) -> int:
    """Tune, report, export or import."""
    from ..codegen.tuning import TuningDB, db_dir, read_records, write_json

    folder = db_dir(a.db or True)
    db = TuningDB.load(folder)
    if a.export:
        write_json(Path(a.export), db.to_json())
        print(f"wrote {len(db.kernels)} kernel and {len(db.models)} model records to {a.export}")
        return 0
    if a.import_file:
        added = db.merge(read_records(a.import_file))
        print(f"imported {added} records into {db.save()}")
        return 0
    if a.report:
        return _report(a, db)
    if a.trials is not None and a.trials < 1:
        raise GraphLLMError(f"--trials must be >= 1, got {a.trials}")
    from ..tools.tune.driver import TuneOptions, tune_model
    from ..tools.tune.report import format_report, report_data

    options = TuneOptions(model=a.model, dtype=a.dtype, kv_dtype=a.kv_dtype, threads=a.threads, db=folder,
                          budget_s=a.budget_minutes * 60 if a.budget_minutes else None, trials=a.trials,
                          show_progress=sys.stderr.isatty())
    try:
        result = tune_model(options)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished kernels are kept in {db.path}; rerun to resume", file=sys.stderr)
        raise
    print(format_report(report_data(TuningDB.load(folder), result["identity"], result["model"])))
    return 0


def _report(a: argparse.Namespace, db: TuningDB) -> int:
    """Print the database's records for this host and thread count."""
    from ..codegen.tuning import identity, resolved_threads
    from ..runtime.builds import host_target
    from ..tools.tune.report import format_report, report_data

    data = report_data(db, identity(host_target(), resolved_threads(a.threads)), a.model and str(a.model))
    print(json.dumps(data, indent=1, default=str) if a.json else format_report(data))
    return 0
