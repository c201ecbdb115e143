"""`graphllm tune --report`: the database's kernels and model comparisons for this host, as text or JSON."""

from __future__ import annotations

from typing import Any

from ...codegen.tuning import TuningDB


def report_data(db: TuningDB, ident: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """The records of one identity (tuned for `model`, or every model's): kernels with speedups, model comparisons."""
    mine = lambda r: r["identity"] == ident and model in (None, r["model"])
    kernels = [{**r, "speedup": r["default_s"] / r["tuned_s"]} for r in db.kernels.values() if mine(r)]
    models = [r for r in db.models.values() if mine(r)]
    return {"identity": ident, "db": str(db.path), "kernels": kernels, "models": models}


def format_report(data: dict[str, Any]) -> str:
    """The report as text: one line per kernel, then the whole-model numbers."""
    ident = data["identity"]
    lines = [f"tuning database {data['db']}",
             f"target {ident['target'].get('mcpu', ident['target']['kind'])}, {ident['threads']} threads, "
             f"graphllm {ident['graphllm']}, TVM {ident['tvm']}"]
    if not data["kernels"]:
        lines.append("no tuned kernels for this target and thread count (run `graphllm tune`)")
    for r in data["kernels"]:
        lines.append(f"  {r['shape']}  x{r['nodes']}")
        lines.append(f"    default {r['default_s'] * 1e6:8.1f} us/token  tuned {r['tuned_s'] * 1e6:8.1f} us/token  "
                     f"{r['speedup']:.2f}x  {r['candidates']} candidates ({r['rejected']} rejected)  "
                     f"knobs {', '.join(f'{k}={v}' for k, v in sorted(r['knobs'].items()))}")
    for m in data["models"]:
        lines.append(f"model {m['model']} ({m['dtype']}), medians of {m['rounds']} alternating rounds:")
        for name in ("default", "tuned"):
            r = m[name]
            lines.append(f"  {name:8} prefill {r['prefill_tok_s']:7.1f} tok/s  decode {r['decode_tok_s']:6.1f} tok/s  "
                         f"{r['decode_gb_s']:.2f} GB/s = {100 * r['bandwidth_share']:.0f}% of copy bandwidth "
                         f"({r['copy_gb_s']:.1f} GB/s)")
    return "\n".join(lines)
