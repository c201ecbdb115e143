"""graphllm with and without its merge/fuse passes, same model and machine, alternating in one run.

Reports what the passes change: kernel launches per decode step, planned activation memory,
in-place updates, prefill and decode tokens/s (medians). Usage:
    python benchmarks/compare_passes.py [-m MODEL] [--dtype D] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from graphllm.passes.manager import DEFAULT_PIPELINE, FUSION_PASSES
from graphllm.tools.bench import run_bench
from graphllm.runtime.llm import LLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    pipelines = {"unfused": [p for p in DEFAULT_PIPELINE if p not in FUSION_PASSES], "fused": DEFAULT_PIPELINE}
    context = a.prompt_tokens + a.gen_tokens + 1
    llms = {k: LLM.load(a.model, dtype=a.dtype, threads=a.threads, max_context=context, passes=p)
            for k, p in pipelines.items()}
    results: dict[str, list[dict]] = {k: [] for k in llms}
    for _ in range(a.rounds):
        for k, llm in llms.items():
            results[k].append(run_bench(llm, a.prompt_tokens, a.gen_tokens, repeat=1))
    print(f"{llms['fused'].model.path} ({llms['fused'].model.file_type}), {a.threads} threads, "
          f"pp{a.prompt_tokens} / tg{a.gen_tokens}, median of {a.rounds} alternating rounds")
    layers = llms["fused"].graph.config.get("num_hidden_layers") or 1
    for k, rs in results.items():
        r = rs[-1]
        print(f"  {k:8s} launches/decode {r['launches_per_decode']:4d} ({r['launches_per_decode'] / layers:.1f}/layer)  "
              f"activations {r['activation_mb_planned']:5.1f} MB planned / {r['activation_mb_naive']:5.1f} MB naive, "
              f"{r['in_place_updates']} in place  "
              f"prefill {statistics.median(x['prefill_tok_s'] for x in rs):6.1f} tok/s  "
              f"decode {statistics.median(x['decode_tok_s'] for x in rs):6.1f} tok/s")


if __name__ == "__main__":
    main()
