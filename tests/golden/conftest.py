"""Checks shared by the golden tests."""

import numpy as np
import pytest


def _greedy_matches(llm, exp, p: int, tol: float) -> None:
    """Prefill of prompt p, then KV-cached decode of transformers' greedy tokens: every step's logits match."""
    ids = exp[f"prompt{p}_ids"].tolist()
    logits = llm.step(ids, range(len(ids)), [len(ids)], [0])[0]
    position = len(ids)
    for k, expected in enumerate(exp[f"prompt{p}_step_logits"]):
        np.testing.assert_allclose(logits, expected, atol=tol, rtol=0, err_msg=f"prompt {p} step {k}")
        logits = llm.decode(int(exp[f"prompt{p}_new_tokens"][k]), position, slot=0)
        position += 1


@pytest.fixture
def greedy_matches():
    """The check that a loaded model reproduces transformers' greedy run of a prompt (see _greedy_matches)."""
    return _greedy_matches
