"""The engine, the one generation loop: batched output equals solo generation and a plain step loop; prefix
reuse, scheduling, stops, limits, cancel, errors; read synchronously (LLM.stream/complete) or with asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from graphllm.errors import GenerationError
from graphllm.runtime.engine import Engine
from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams
from graphllm.io.tokenizer import Tokenizer

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
PROMPTS = [f"Prompt {i}: " + "the quick brown fox " * i for i in range(10)]


@pytest.fixture(scope="module")
def solo() -> LLM:
    return LLM.load(TINY, executor="reference")


@pytest.fixture
def tiny4():
    """A fresh 4-slot LLM whose engine also serves asyncio readers."""
    llm = LLM.load(TINY, executor="reference", num_slots=4)
    llm.engine.start()
    yield llm
    llm.engine.close()


class ScriptedLLM:
    """Stands in for LLM and its executor: the next token after position p is script[p]; records every step;
    can sleep or fail."""

    def __init__(self, script: list[int], max_context: int = 64, delay: float = 0.0) -> None:
        self.executor = self
        self.tokenizer = Tokenizer.from_hf_folder(TINY)
        self.script = script
        self.max_context = max_context
        self.delay = delay
        self.calls: list[tuple[list[int], list[int], list[int], list[int]]] = []
        self.fail_next = False

    def run(self, ids, positions, seq_lens, slots) -> np.ndarray:
        self.calls.append((list(ids), list(positions), list(seq_lens), list(slots)))
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        last = np.cumsum(seq_lens) - 1
        logits = np.zeros((len(seq_lens), self.tokenizer.vocab_size), np.float32)
        logits[np.arange(len(seq_lens)), [self.script[positions[i]] for i in last]] = 1.0
        return logits


async def run(engine: Engine, ids: list[int], params: SamplingParams):
    """Submit one request and collect (text, finish_reason, completion_tokens)."""
    request = engine.submit(ids, params)
    chunks = [c async for c in request]
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].token is None
    return "".join(c.text for c in chunks), chunks[-1].finish_reason, request.completion_tokens


def run_all(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]):
    """Run requests concurrently on one event loop."""
    async def main():
        return await asyncio.gather(*(run(engine, ids, p) for ids, p in jobs))
    return asyncio.run(main())


@pytest.fixture
def engine_factory():
    engines: list[Engine] = []

    def make(llm, slots: int, max_step_tokens: int = 128) -> Engine:
        engines.append(Engine(llm, slots, max_step_tokens))
        engines[-1].start()
        return engines[-1]
    yield make
    for e in engines:
        e.close()


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=3, max_tokens=12),
], ids=["greedy", "seeded-sampling"])
def test_batched_requests_equal_solo_generation(solo, tiny4, params):
    engine = tiny4.engine
    engine.set_step_tokens(8)  # 10 requests > 4 slots, prompts in small chunks
    results = run_all(engine, [(tiny4.tokenizer.encode(p), params) for p in PROMPTS])
    for prompt, (text, finish, n) in zip(PROMPTS, results):
        expected = solo.complete(prompt, params)
        assert (text, finish, n) == (expected.text, expected.finish_reason, len(expected.token_ids))
    assert engine.stats() == {"running": 0, "waiting": 0, "slots": 4, "steps": engine.steps, "cancelled": 0}


def test_stop_string_cuts_like_generate(solo, tiny4):
    full = solo.complete("Hello", SamplingParams(max_tokens=16, ignore_eos=True)).text
    params = SamplingParams(max_tokens=16, ignore_eos=True, stop=["zzz", full[5:7]])
    [(text, finish, _)] = run_all(tiny4.engine, [(tiny4.tokenizer.encode("Hello"), params)])
    assert (text, finish) == (full[:full.find(full[5:7])], "stop")
    assert text == solo.complete("Hello", params).text


def test_prefix_reuse_feeds_only_the_new_tokens(solo, tiny4):
    engine = tiny4.engine
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    first = tiny4.tokenizer.encode(PROMPTS[3])
    [(reply, _, _)] = run_all(engine, [(first, params)])
    follow = tiny4.tokenizer.encode(PROMPTS[3] + reply + " and more")
    before = engine.prompt_tokens_run
    [(text, _, _)] = run_all(engine, [(follow, params)])
    assert text == solo.complete(follow, params).text
    assert engine.prompt_tokens_run - before <= len(follow) - len(first) + 1  # the first turn was not run again


def test_one_packed_step_per_iteration_within_a_token_budget(engine_factory):
    llm = ScriptedLLM(script=[7] * 64)
    engine = engine_factory(llm, 3, max_step_tokens=5)
    jobs = [([5] * n, SamplingParams(max_tokens=4, ignore_eos=True)) for n in (12, 3, 9)]
    results = run_all(engine, jobs)
    assert [r[2] for r in results] == [4, 4, 4]
    for ids, positions, lens, slots in llm.calls:
        assert len(ids) == len(positions) == sum(lens) and len(set(slots)) == len(slots)
        assert sum(lens) <= 5  # tokens per step are bounded
    assert any(1 in lens and max(lens) > 1 for _, _, lens, _ in llm.calls)  # decodes ride along with a prefill


def test_eos_context_limit_and_zero_max_tokens(engine_factory):
    eos = Tokenizer.from_hf_folder(TINY).eos_token_ids[0]
    script = [40, 41, 42, eos, 43, 44, 45, 46, 47, 48, 49, 50]
    engine = engine_factory(ScriptedLLM(script, max_context=12), 2)
    results = run_all(engine, [
        ([1, 2], SamplingParams(max_tokens=50)),                   # 40 41 then eos -> stop
        ([1, 2], SamplingParams(max_tokens=50, ignore_eos=True)),  # runs into the 12-token context -> length
        ([1, 2], SamplingParams(max_tokens=0)),
    ])
    assert [(finish, n) for _, finish, n in results] == [("stop", 2), ("length", 10), ("length", 0)]


def test_bad_requests_raise_at_submit(engine_factory):
    with pytest.raises(GenerationError, match="must exceed the slots"):
        Engine(ScriptedLLM([1]), 8, max_step_tokens=8)
    engine = engine_factory(ScriptedLLM([1] * 16, max_context=16), 1)

    async def main():
        with pytest.raises(GenerationError, match="context holds 16"):
            engine.submit([1] * 16, SamplingParams())
        with pytest.raises(GenerationError, match="empty"):
            engine.submit([], SamplingParams())
        with pytest.raises(GenerationError, match="top_p"):
            engine.submit([1], SamplingParams(top_p=0))
    asyncio.run(main())


def test_cancel_frees_the_slot_for_a_waiting_request(engine_factory):
    llm = ScriptedLLM([9] * 64, delay=0.005)
    engine = engine_factory(llm, 1)

    async def main():
        long = engine.submit([1, 2], SamplingParams(max_tokens=60, ignore_eos=True))
        waiting = engine.submit([3, 4], SamplingParams(max_tokens=3, ignore_eos=True))
        got = [await long.__anext__() for _ in range(2)]
        long.cancel()
        rest = [c async for c in waiting]
        return got, rest, long
    got, rest, long = asyncio.run(main())
    assert len(got) == 2 and rest[-1].finish_reason == "length"
    assert long.finish_reason == "cancelled" and long.completion_tokens < 20
    assert engine.stats()["running"] == 0


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine_factory):
    llm = ScriptedLLM([9] * 64)
    engine = engine_factory(llm, 2)
    llm.fail_next = True

    async def first():
        with pytest.raises(RuntimeError, match="boom"):
            [c async for c in engine.submit([1, 2], SamplingParams(max_tokens=3))]
    asyncio.run(first())
    assert run_all(engine, [([1, 2], SamplingParams(max_tokens=3, ignore_eos=True))])[0][1:] == ("length", 3)


def test_close_ends_unfinished_requests():
    engine = Engine(ScriptedLLM([9] * 64, delay=0.01), 1)

    async def main():
        a = engine.submit([1], SamplingParams(max_tokens=60, ignore_eos=True))
        b = engine.submit([1], SamplingParams(max_tokens=60, ignore_eos=True))
        await a.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        for request in (a, b):
            with pytest.raises(GenerationError, match="shutting down"):
                [c async for c in request]
    asyncio.run(main())


def test_a_lagging_reader_gets_everything_produced_in_one_call(engine_factory):
    engine = engine_factory(ScriptedLLM([9] * 64), 1)

    async def main():
        request = engine.submit([1, 2], SamplingParams(max_tokens=5, ignore_eos=True))
        while request.finish_reason is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return await request.ready(), await request.ready()
    first, second = asyncio.run(main())
    assert [c.token for c in first] == [9] * 5 + [None] and first[-1].finish_reason == "length"
    assert second == []


def greedy_step_loop(llm: LLM, ids: list[int], n: int) -> list[int]:
    """The oracle: raw prefill and decode steps with argmax, no engine."""
    tokens = [int(np.argmax(llm.prefill(ids)))]
    while len(tokens) < n:
        tokens.append(int(np.argmax(llm.decode(tokens[-1], len(ids) + len(tokens) - 1))))
    return tokens


def test_complete_equals_a_plain_step_loop_and_the_batched_engine(tiny4):
    llm = LLM.load(TINY, executor="reference")
    ids = llm.tokenizer.encode(PROMPTS[2])
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    alone = llm.complete(ids, params)
    assert alone.token_ids == greedy_step_loop(LLM.load(TINY, executor="reference"), ids, 10)
    assert (alone.prompt_tokens, alone.finish_reason) == (len(ids), "length")
    others = [(tiny4.tokenizer.encode(p), SamplingParams(max_tokens=7, temperature=0.9, seed=i)) for i, p in
              enumerate(PROMPTS[3:6])]
    results = run_all(tiny4.engine, [(ids, params), *others])
    assert results[0] == (alone.text, "length", 10)


def test_prefix_reuse_across_complete_calls():
    llm = LLM.load(TINY, executor="reference")
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    first = llm.tokenizer.encode(PROMPTS[4])
    reply = llm.complete(first, params).token_ids
    assert llm.engine.prompt_tokens_run == len(first)
    second = first + reply + llm.tokenizer.encode(" and then", add_special_tokens=False)
    cached = len(first) + len(reply) - 1  # the last sampled token was never run
    text = llm.complete(second, params).text
    assert llm.engine.prompt_tokens_run == len(first) + len(second) - cached
    assert text == LLM.load(TINY, executor="reference").complete(second, params).text
    llm.prefill(first)  # a raw step overwrites the slot: nothing of it is reused afterwards
    llm.complete(second, params)
    assert llm.engine.prompt_tokens_run == len(first) + 2 * len(second) - cached


def test_stop_strings_and_token_limits_in_the_one_path(solo):
    full = solo.complete("Hello", SamplingParams(max_tokens=12, ignore_eos=True))
    stop = full.text[4:6]
    cut = solo.complete("Hello", SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop]))
    assert (cut.text, cut.finish_reason) == (full.text[:full.text.find(stop)], "stop")
    three = solo.complete("Hello", SamplingParams(max_tokens=3, ignore_eos=True))
    assert (three.token_ids, three.finish_reason) == (full.token_ids[:3], "length")
    assert solo.complete("Hello", SamplingParams(max_tokens=0)).token_ids == []
    engine = Engine(ScriptedLLM([9] * 64, max_context=20), 1)  # max_tokens None: until the context is full
    request = engine.submit([1, 2, 3], SamplingParams(max_tokens=None, ignore_eos=True))
    assert [c.token for c in request] == [9] * 17 + [None] and request.finish_reason == "length"


def test_leaving_a_stream_early_frees_its_slot(solo):
    for _ in solo.stream("Hello", SamplingParams(max_tokens=50, ignore_eos=True)):
        break
    assert solo.complete("Hi", SamplingParams(max_tokens=4, ignore_eos=True)).finish_reason == "length"
    assert solo.engine.stats()["running"] == 0


def test_sync_readers_in_several_threads_share_the_engine(solo):
    llm = LLM.load(TINY, executor="reference", num_slots=2)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = llm.complete(PROMPTS[i], params).text
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]  # 5 readers, 2 slots
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: solo.complete(PROMPTS[i], params).text for i in range(5)}


def failing_sampler(logits, history) -> int:
    """A sampler that meets bad logits."""
    raise ValueError("NaN logits")


def test_a_failing_sample_fails_only_its_request(engine_factory):
    engine = engine_factory(ScriptedLLM([9] * 64), 2)  # sync readers while the background thread runs too
    bad = engine.submit([1, 2], SamplingParams(max_tokens=3, ignore_eos=True))
    bad.sampler = failing_sampler
    good = engine.submit([3, 4], SamplingParams(max_tokens=3, ignore_eos=True))
    with pytest.raises(ValueError, match="NaN"):
        list(bad)
    assert [c.token for c in good] == [9, 9, 9, None]
