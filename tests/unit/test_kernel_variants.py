"""Which kernel variant a step calls: chosen by the rows of its output, so in a prefill the per-token linears run
their GEMMs while the lm_head, which sees one gathered row per sequence, keeps its GEMV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphllm.codegen.compile import compile_graph
from graphllm.dsl.reference import ReferenceExecutor
from graphllm.pipeline import GraphOptions, build
from graphllm.runtime.executor import CompiledExecutor

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_llama"


def test_the_lm_head_keeps_its_gemv_in_a_prefill(tmp_path: Path) -> None:
    """At T = 16, B = 1 every row-parallel step with a large variant takes it except the B-row lm_head; the
    logits (GEMV over the gathered last row) still equal the reference's."""
    built = build(FIXTURE, GraphOptions())
    artifact = compile_graph(built.graph, tmp_path / "art", show_progress=False)
    ex = CompiledExecutor(artifact, built.weights, max_context=32)
    plan, tokens = ex.plan, 16
    variants = [s for s in plan.kernel_steps if s.large is not None]
    per_sequence = [s for s in variants if plan.values[s.node].type.shape[0] == "B"]
    per_token = [s for s in variants if plan.values[s.node].type.shape[0] == "T"]
    assert per_sequence and per_token
    assert all(plan.kernel_symbol(s, tokens, 1) == s.kernel for s in per_sequence)
    assert all(plan.kernel_symbol(s, tokens, 1) == s.large for s in per_token if tokens >= s.large_from)
    assert any(plan.kernel_symbol(s, tokens, 1) == s.large for s in per_token)
    assert all(plan.kernel_symbol(s, tokens, s.large_from) == s.large for s in per_sequence)
    ref = ReferenceExecutor(built.graph, built.weights, max_context=32)
    step = (np.arange(3, 3 + tokens), np.arange(tokens), [tokens], [0])
    np.testing.assert_allclose(ex.run(*step), ref.run(*step), atol=1e-4, rtol=0)
