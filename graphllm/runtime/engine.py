"""The one generation loop: continuous batching of 1..N sequences over an executor's KV-cache slots.

Each step admits waiting requests into free slots (preferring the slot whose cache already holds the
longest prefix of the prompt: prefix reuse), drops cancelled ones, and runs one packed forward call for
every running sequence: one token for each decode plus prompt chunks in what is left of
``max_step_tokens``, so a long prompt never stalls the others for long (and a step never exceeds what
the executor runs as one packed call). Then each caught-up sequence samples its next token.

Who runs the steps: a synchronous reader (``for chunk in request``: the CLI, chat, ``LLM.stream``) runs
them in its own thread until its next chunk exists, so a single sequence costs no thread hand-off;
asynchronous readers (``async for``: the server) are served by a background thread (``start``, or a
reader's first wait, starts it) that wakes each waiting reader's event loop once per step. Steps are
serialized by one lock, so both kinds of reader, from any threads, may share an engine.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import GenerationError
from .generate import Chunk, TokenStream, check_prompt
from .sampling import SamplingParams

if TYPE_CHECKING:  # asyncio (4 MiB) loads with the server, whose readers wait asynchronously
    import asyncio

DEFAULT_STEP_TOKENS = 128  # the compiled executor's packed-step size
_END = object()  # marker after a request's last item: it is over (after its final chunk or its error)


class EngineClosed(GenerationError):
    """The engine is shutting down: the request was refused or ended before it finished."""


class Executor(Protocol):
    """What the engine runs: one forward step over packed sequences (CompiledExecutor, ReferenceExecutor)."""

    def run(self, input_ids: Sequence[int], positions: Sequence[int], seq_lens: Sequence[int],
            slots: Sequence[int]) -> np.ndarray: ...


class Model(Protocol):
    """What the engine needs of an LLM: its tokenizer, context length and executor."""

    tokenizer: Any
    max_context: int
    executor: Executor


class Request(TokenStream):
    """One generation: its sampling state, its slot in the KV cache, and its chunks, read sync or async."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams) -> None:
        super().__init__(engine.llm.tokenizer, prompt_ids, params, engine.llm.max_context)
        self.engine = engine
        self.cached = 0  # how many of history's positions the slot's KV cache holds
        self.slot = -1
        self.cancelled = False
        self.waiter: asyncio.Future | None = None  # set while an async reader waits for the next item

    def cancel(self) -> None:
        """Stop generating (the reader went away); the slot is freed at the next step."""
        if self.finish_reason is None and not self.cancelled:
            self.cancelled = True
            self.engine.note_cancel()

    def __iter__(self) -> Iterator[Chunk]:
        """The chunks, read in this thread, which runs engine steps until each exists; leaving early cancels."""
        out, step = self.out, self.engine.step
        try:
            while True:
                while not out:
                    step()
                item = out.popleft()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def __aiter__(self) -> Request:
        """Iterate the chunks with ``async for`` (steps run in the engine's background thread)."""
        return self

    async def __anext__(self) -> Chunk:
        """The next chunk; the last one has token None and the finish reason. Raises the engine's error."""
        while not self.out:
            await self._wait()
        item = self.out[0]
        if item is _END:  # left in place: the request stays exhausted
            raise StopAsyncIteration
        self.out.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    async def ready(self) -> list[Chunk]:
        """The next chunk plus all others already produced ([] at the end): a lagging reader catches up at once."""
        try:
            chunks = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        while chunks[-1].finish_reason is None and self.out and isinstance(self.out[0], Chunk):
            chunks.append(self.out.popleft())
        return chunks

    async def _wait(self) -> None:
        """Sleep until the engine has queued an item (the waiter is set before the queue is checked again)."""
        import asyncio

        self.engine.start()
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            if not self.out:
                await self.waiter
        finally:
            self.waiter = None


class Engine:
    """The batching scheduler over ``llm``'s executor; ``submit`` a prompt, iterate the returned Request."""

    def __init__(self, llm: Model, num_slots: int, max_step_tokens: int = DEFAULT_STEP_TOKENS) -> None:
        self.check_sizes(num_slots, max_step_tokens)
        self.llm = llm
        self.num_slots = num_slots
        self.max_step_tokens = max_step_tokens
        self.steps = 0
        self.cancelled = 0  # requests whose readers left before they finished
        self.prompt_tokens_run = 0  # prompt tokens computed, i.e. not found in a slot's cached prefix
        self._step_lock = threading.Lock()  # one step at a time, whichever thread runs it
        self._cond = threading.Condition()  # guards _waiting, _closed, _stopped, _cancels; the background thread sleeps here
        self._waiting: deque[Request] = deque()
        self._cancels = False  # a request was cancelled since the last step
        self._closed = False  # no new requests; the background thread ends once nothing runs
        self._stopped = False  # the background thread ends now
        self._thread: threading.Thread | None = None
        # touched only under _step_lock:
        self._running: list[Request] = []
        self._free = list(range(num_slots))  # least recently used first
        self._slot_ids: list[Sequence[int]] = [() for _ in range(num_slots)]  # what each slot's cache holds
        # the step being built: ids, positions, lengths and slots of its sequences, and their requests
        self._batch: tuple[list[int], list[int], list[int], list[int], list[Request]] = ([], [], [], [], [])

    # ------------------------------------------------------------ public
    @staticmethod
    def check_sizes(num_slots: int, max_step_tokens: int) -> None:
        """Each step holds one decode per slot and at least one prompt token; GenerationError otherwise."""
        if not 1 <= num_slots < max_step_tokens:
            raise GenerationError(f"tokens per step ({max_step_tokens}) must exceed the slots ({num_slots}) "
                                  f"and there must be at least one slot")

    def set_step_tokens(self, max_step_tokens: int) -> None:
        """Change the tokens per step (checked against the slots)."""
        self.check_sizes(self.num_slots, max_step_tokens)
        self.max_step_tokens = max_step_tokens

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Queue a generation (from any thread); bad prompts or params raise GenerationError."""
        check_prompt(len(prompt_ids), self.llm.max_context)
        request = Request(self, list(prompt_ids), params)
        if params.max_tokens == 0:
            request.out.extend((request.final("length", flush=False), _END))
            return request
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def stats(self) -> dict[str, int]:
        """Counts for /health: running and waiting requests, slots, steps run, requests cancelled."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "slots": self.num_slots,
                    "steps": self.steps, "cancelled": self.cancelled}

    def forget(self, slots: Sequence[int]) -> None:
        """Those slots' caches were overwritten outside the engine: no prefix of theirs is reused."""
        for slot in slots:
            if self._slot_ids[slot]:
                self._slot_ids[slot] = ()

    def start(self) -> None:
        """Start the background thread that steps for asynchronous readers (once; no-op when closed)."""
        if self._thread is None:
            with self._cond:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(target=self._loop, name="graphllm-engine", daemon=True)
                    self._thread.start()

    def close(self, grace: float = 0.0) -> None:
        """Shut down: refuse new requests, end the queued ones, give the running ones ``grace`` seconds to
        finish, then end them too (EngineClosed) and stop the background thread."""
        with self._cond:
            self._closed = True
            queued = list(self._waiting)
            self._waiting.clear()
            self._cond.notify()
        self._end(queued)
        if self._thread is not None:
            self._thread.join(grace)  # it ends by itself once nothing runs
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        self._end(self._running)

    def _end(self, requests: Sequence[Request]) -> None:
        """End these unfinished requests with EngineClosed and wake their readers."""
        with self._step_lock:
            ended = list(requests)
            for request in ended:
                self._finish(request, EngineClosed("the engine is shutting down"))
        _wake(ended)

    def note_cancel(self) -> None:
        """A request was cancelled: the next step drops it (and the background thread looks now)."""
        with self._cond:
            self._cancels = True
            self._cond.notify()

    # ------------------------------------------------------------ stepping
    def step(self) -> None:
        """One round: admit and drop requests, one packed forward step, sampling; from any thread."""
        with self._step_lock:
            if self._waiting or self._cancels:
                ended = self._schedule()
                if ended:
                    _wake(ended)
            if self._running:
                self._forward()

    def _loop(self) -> None:
        """The background thread: step while there is work, until closed."""
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._running or self._cancels):
                    self._cond.wait()
                if self._stopped or (self._closed and not self._running):
                    return
            self.step()

    def _schedule(self) -> list[Request]:
        """Drop cancelled requests, admit waiting ones into free slots; the requests that ended (step lock held)."""
        with self._cond:
            ended = []
            if self._cancels:
                self._cancels = False
                ended = [r for r in (*self._running, *self._waiting) if r.cancelled]
                for request in ended:
                    if request.slot < 0:
                        self._waiting.remove(request)
                    self._finish(request)
            while self._waiting and self._free:
                request = self._waiting.popleft()
                common = [_common_prefix(self._slot_ids[s], request.history) for s in self._free]
                best = max(range(len(common)), key=common.__getitem__)
                request.slot = self._free.pop(best)
                request.cached = min(common[best], len(request.history) - 1)
                self._running.append(request)
        return ended

    def _forward(self) -> None:
        """One packed forward step over the running sequences (decodes first), then sampling (step lock held)."""
        ids, positions, lens, slots, batch = self._batch
        for part in self._batch:
            part.clear()
        for r in self._running:  # decodes: one token each, they always fit (slots < max_step_tokens)
            if r.cached == len(r.history) - 1:
                if r.cached < r.prompt_tokens:  # the prompt's last token (the rest was cached)
                    self.prompt_tokens_run += 1
                ids.append(r.history[-1])
                positions.append(r.cached)
                lens.append(1)
                slots.append(r.slot)
                batch.append(r)
        budget = self.max_step_tokens - len(ids)
        for r in self._running:  # prompt chunks in the rest
            if budget and r.cached < len(r.history) - 1:
                n = min(len(r.history) - r.cached, budget)
                budget -= n
                self.prompt_tokens_run += n
                ids += r.history[r.cached:r.cached + n]
                positions += range(r.cached, r.cached + n)
                lens.append(n)
                slots.append(r.slot)
                batch.append(r)
        try:
            logits = self.llm.executor.run(ids, positions, lens, slots)
        except Exception as exc:  # noqa: BLE001 - the requests in this step get the error, the engine goes on
            for r in batch:
                r.cached = 0  # its slot's cache may be half written
                self._finish(r, exc)
            _wake(batch)
            return
        self.steps += 1
        waiting = False
        for i, r in enumerate(batch):
            r.cached += lens[i]
            if r.cancelled or r.cached < len(r.history):
                continue
            try:
                r.accept(logits[i])
            except Exception as exc:  # noqa: BLE001 - e.g. NaN logits: this request fails, the others go on
                self._finish(r, exc)
            else:
                if r.finish_reason is not None:
                    self._finish(r)
            waiting = waiting or r.waiter is not None
        if waiting:
            _wake(batch)

    def _finish(self, request: Request, error: BaseException | None = None) -> None:
        """End a request: its error if any, then the end marker; free its slot, remembering what it holds."""
        if request.finish_reason is None and request.cancelled:
            self.cancelled += 1
        request.finish_reason = request.finish_reason or ("cancelled" if request.cancelled else "error")
        if error is not None:
            request.out.append(error)
        request.out.append(_END)
        if request.slot >= 0 and request in self._running:
            self._running.remove(request)
            self._slot_ids[request.slot] = request.history[:request.cached]
            self._free.append(request.slot)


def _wake(requests: list[Request]) -> None:
    """Resolve the waiters of these requests (async readers), with one thread-safe call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, asyncio.Future]]] = {}
    for r in requests:
        waiter = r.waiter  # read once: the reader clears it from its own thread
        if waiter is not None and r.out:
            by_loop.setdefault(waiter.get_loop(), []).append((r, waiter))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, [w for _, w in pairs])
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for r, _ in pairs:
                r.cancel()


def _resolve(waiters: list[asyncio.Future]) -> None:
    """Runs on the readers' event loop: wake each reader still waiting."""
    for w in waiters:
        if not w.done():
            w.set_result(None)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
