"""Engine.close(grace): queued requests end at once, running ones may finish within the grace, then end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.engine import Engine, EngineClosed
from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
LONG = SamplingParams(max_tokens=100, ignore_eos=True)


class SlowLLM:
    """The tiny model with each step taking 10 ms more: a 100-token request runs for a second."""

    def __init__(self) -> None:
        self.llm = LLM.load(TINY, executor="reference")
        self.tokenizer, self.max_context, self.executor = self.llm.tokenizer, self.llm.max_context, self

    def run(self, *step: list[int]) -> np.ndarray:
        time.sleep(0.01)
        return self.llm.executor.run(*step)


@pytest.mark.parametrize("grace", [0.0, 60.0])
def test_close_ends_queued_requests_and_running_ones_after_the_grace(grace):
    engine = Engine(SlowLLM(), 1)

    async def main() -> None:
        running, queued = engine.submit([1, 2], LONG), engine.submit([1, 2], LONG)  # one slot: the second waits
        await running.__anext__()
        start = time.monotonic()
        await asyncio.to_thread(engine.close, grace)
        assert time.monotonic() - start < 10  # with a grace, close returns once the running request is done
        with pytest.raises(EngineClosed):
            [c async for c in queued]
        if grace:
            assert [c async for c in running][-1].finish_reason == "length"
        else:
            with pytest.raises(EngineClosed):
                [c async for c in running]
        with pytest.raises(EngineClosed):
            engine.submit([1, 2], LONG)
    asyncio.run(main())
