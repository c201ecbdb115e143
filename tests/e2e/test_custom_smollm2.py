"""examples/qwen2_fastllm.py (a fastllm custom model file) on the real SmolLM2: the built-in Llama's graph
and logits (SmolLM2 has no biases and ties lm_head to the embedding: both resolve as in fastllm)."""

import json
from pathlib import Path

import numpy as np

from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import graph_difference
from graphllm.pipeline import build_graph, weight_source
from graphllm.io.loader import weight_types

ROOT = Path(__file__).parents[2]
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "smollm2_golden.json").read_text())


def test_fastllm_example_runs_smollm2_like_the_builtin(smollm2_model, exact_kv):
    types = weight_types(smollm2_model)
    custom = build_graph(smollm2_model.config, types, ROOT / "examples" / "qwen2_fastllm.py", passes=[],
                         kv_dtype=exact_kv)
    builtin = build_graph(smollm2_model.config, types, passes=[], kv_dtype=exact_kv)
    assert graph_difference(custom, builtin, locs=False) is None
    case = GOLDEN["prompts"][0]
    ids = case["prompt_ids"]
    logits = [ReferenceExecutor(g, weight_source(smollm2_model, g), max_context=8).run(ids, range(len(ids)), [len(ids)], [0])[0]
              for g in (custom, builtin)]
    np.testing.assert_array_equal(logits[0], logits[1])
    top, values = np.array(case["prefill_last_top20"]).T
    np.testing.assert_allclose(logits[0][top.astype(int)], values, atol=2e-3, rtol=0)
