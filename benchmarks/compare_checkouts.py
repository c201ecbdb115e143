"""Compare `graphllm bench` of two checkouts of graphllm (e.g. before and after a change), alternating in one run.

    git worktree add /tmp/old <commit>
    python benchmarks/compare_checkouts.py /tmp/old . --rounds 3 -- --prompt-tokens 128 --gen-tokens 128

Each round runs the bench of every checkout once (each in its own process, the checkout first on
PYTHONPATH), so both see the same machine state; the table shows the medians. Arguments after `--`
go to `graphllm bench` unchanged (the model, --dtype, --threads, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

FIELDS = (("prefill_tok_s", "prefill tok/s"), ("decode_tok_s", "decode tok/s"), ("bandwidth_share", "bandwidth share"),
          ("peak_rss_mb", "peak RSS MiB"))


def bench(checkout: Path, args: list[str]) -> dict:
    """One `graphllm bench --json` of a checkout."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", "bench", "--json", *args], env=env, cwd=checkout,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench failed in {checkout}:\n{r.stderr}")
    return json.loads(r.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="graphllm checkouts (folders holding graphllm/)")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    a = parser.parse_args(argv[:split])
    rest = argv[split + 1:]
    results: dict[Path, list[dict]] = {c: [] for c in a.checkouts}
    for r in range(a.rounds):
        for c in a.checkouts:
            results[c].append(bench(c, rest))
            print(f"round {r + 1}: {c}: " + ", ".join(f"{label} {results[c][-1].get(key, float('nan')):.1f}"
                                                      for key, label in FIELDS), file=sys.stderr)
    print("| checkout | " + " | ".join(label for _, label in FIELDS) + " |")
    print("|---|" + "---:|" * len(FIELDS))
    for c, runs in results.items():
        cells = [statistics.median(run.get(key, float("nan")) for run in runs) for key, _ in FIELDS]
        print(f"| {c} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
