"""Continuous batching: one background thread owns the LLM and runs one packed step for all requests.

Requests are submitted from any asyncio event loop and read back as async iterators of
``generate.Chunk``. Between steps the engine admits waiting requests into free KV-cache slots
(preferring the slot whose cache already holds the longest prefix of the prompt), drops cancelled
ones, and builds a single ``llm.step`` from every running sequence: one token for each decode plus
prompt chunks in what is left of ``max_step_tokens``, so a long prompt never stalls the others for long
(and a step never exceeds what the executor runs as one packed call).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import GenerationError
from .generate import Chunk, TokenStream, check_prompt
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .llm import LLM

_END = object()  # queue marker: the request is over (after its final chunk or error)


class Request(TokenStream):
    """One generation: its sampling state, its slot in the KV cache, and the queue its chunks go to."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(engine.llm.tokenizer, prompt_ids, params, engine.llm.max_context)
        self.engine = engine
        self.cached = 0  # how many of history's positions the slot's KV cache holds
        self.slot = -1
        self.cancelled = False
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._held: object = None  # an item taken from the queue by ready() but not yet returned

    def cancel(self) -> None:
        """Stop generating (a client went away); the slot is freed before the next step."""
        if self.finish_reason is None and not self.cancelled:
            self.cancelled = True
            self.engine._wake()

    def __aiter__(self) -> Request:
        """Iterate the chunks with ``async for``."""
        return self

    async def __anext__(self) -> Chunk:
        """The next chunk; the last one has token None and the finish reason. Raises the engine's error."""
        item = await self.queue.get() if self._held is None else self._held
        self._held = None
        if item is _END or isinstance(item, BaseException):
            self._held = _END  # stay exhausted
            if item is _END:
                raise StopAsyncIteration
            raise item
        return item

    async def ready(self) -> list[Chunk]:
        """The next chunk plus all others already produced ([] at the end): a lagging reader catches up at once."""
        try:
            chunks = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        while chunks[-1].finish_reason is None and not self.queue.empty():
            item = self.queue.get_nowait()
            if not isinstance(item, Chunk):
                self._held = item
                break
            chunks.append(item)
        return chunks


class Engine:
    """The batching scheduler; ``submit`` from an event loop, iterate the returned Request."""

    def __init__(self, llm: LLM, num_slots: int, max_step_tokens: int = 128) -> None:
        self.check_sizes(num_slots, max_step_tokens)
        self.llm = llm
        self.num_slots = num_slots
        self.max_step_tokens = max_step_tokens
        self.steps = 0
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._free = list(range(num_slots))  # least recently used first
        self._slot_ids: list[list[int]] = [[] for _ in range(num_slots)]  # what each slot's cache holds
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="graphllm-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public
    @staticmethod
    def check_sizes(num_slots: int, max_step_tokens: int) -> None:
        """Each step holds one decode per slot and at least one prompt token; GenerationError otherwise."""
        if not 1 <= num_slots < max_step_tokens:
            raise GenerationError(f"tokens per step ({max_step_tokens}) must exceed the slots ({num_slots}) "
                                  f"and there must be at least one slot")

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Queue a generation; call from a running event loop. Bad prompts or params raise GenerationError."""
        check_prompt(len(prompt_ids), self.llm.max_context)
        request = Request(self, list(prompt_ids), params, asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise GenerationError("the engine is shut down")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def stats(self) -> dict[str, int]:
        """Counts for /health: running and waiting requests, slots, steps run."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "slots": self.num_slots,
                    "steps": self.steps}

    def close(self) -> None:
        """Stop the thread; unfinished requests end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # ------------------------------------------------------------ the thread
    def _wake(self) -> None:
        """Make the thread look at its queues now (a request was cancelled)."""
        with self._cond:
            self._cond.notify()

    def _loop(self) -> None:
        """Schedule, step, deliver; until closed."""
        while True:
            out: dict[asyncio.AbstractEventLoop, list[tuple[Request, object]]] = {}
            with self._cond:
                while not (self._closed or self._waiting or self._running):
                    self._cond.wait()
                if self._closed:
                    break
                for request in [r for r in (*self._running, *self._waiting) if r.cancelled]:
                    self._finish(request, [], out)
                for request in self._admit():
                    if request.params.max_tokens == 0:
                        self._finish(request, [request.final("length", flush=False)], out)
            self._step(out)
            self._deliver(out)
        with self._cond:
            for request in [*self._running, *self._waiting]:
                self._finish(request, [GenerationError("the server is shutting down")], out)
        self._deliver(out)

    def _admit(self) -> list[Request]:
        """Move waiting requests into free slots, each where the most of its prompt is cached (lock held)."""
        admitted = []
        while self._waiting and self._free:
            request = self._waiting.popleft()
            slot = max(self._free, key=lambda s: _common_prefix(self._slot_ids[s], request.history))
            self._free.remove(slot)
            request.slot = slot
            request.cached = min(_common_prefix(self._slot_ids[slot], request.history), len(request.history) - 1)
            self._running.append(request)
            admitted.append(request)
        return admitted

    def _release(self, request: Request) -> None:
        """Free a request's slot, remembering what its cache holds for prefix reuse."""
        self._running.remove(request)
        self._slot_ids[request.slot] = request.history[:request.cached]
        self._free.append(request.slot)

    def _step(self, out: dict) -> None:
        """One packed forward step for every running sequence, then sampling for the caught-up ones."""
        batch: list[tuple[Request, int]] = []
        budget = self.max_step_tokens
        for request in sorted(self._running, key=lambda r: len(r.history) - r.cached > 1):  # decodes first
            n = min(len(request.history) - request.cached, budget)  # decodes always fit (slots < budget)
            budget -= n
            if n:
                batch.append((request, n))
        if not batch:
            return
        ids: list[int] = []
        positions: list[int] = []
        for request, n in batch:
            ids += request.history[request.cached:request.cached + n]
            positions += range(request.cached, request.cached + n)
        try:
            logits = self.llm.step(ids, positions, [n for _, n in batch], [r.slot for r, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the requests in this step get the error, the engine goes on
            for request, _ in batch:
                request.cached = 0  # its slot's cache may be half written
                self._finish(request, [exc], out)
            return
        self.steps += 1
        for row, (request, n) in zip(logits, batch):
            request.cached += n
            if request.cancelled or request.cached < len(request.history):
                continue
            chunks = request.accept(request.sample(row))
            if request.finish_reason is None:
                out.setdefault(request.loop, []).extend((request, c) for c in chunks)
            else:
                self._finish(request, chunks, out)

    def _finish(self, request: Request, items: list, out: dict) -> None:
        """Queue a request's last items and its end marker; free its slot."""
        request.finish_reason = request.finish_reason or ("cancelled" if request.cancelled else "error")
        out.setdefault(request.loop, []).extend([(request, i) for i in items] + [(request, _END)])
        with self._cond:
            if request in self._running:
                self._release(request)
            elif request in self._waiting:
                self._waiting.remove(request)

    @staticmethod
    def _deliver(out: dict) -> None:
        """Hand each event loop its requests' new items in one thread-safe call."""
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for request, _ in items:
                    request.cancelled = True


def _put_all(items: list[tuple[Request, object]]) -> None:
    """Runs on the request's event loop: enqueue each item."""
    for request, item in items:
        request.queue.put_nowait(item)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
