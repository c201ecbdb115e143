"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine, plus the chat page at `/`.

`graphllm serve -m MODEL` or `python -m graphllm.server -p PATH`; endpoints: GET /v1/models,
POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /health, GET / (web UI).
FastAPI and pydantic are imported only when an app is made, so `graphllm`'s other commands start fast.
"""

import asyncio
import functools
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GraphLLMError
from ..runtime.sampling import COMPLETIONS_MAX_TOKENS, SamplingParams

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from ..runtime.engine import Engine
    from ..runtime.engine import Request as Generation

WEBUI = Path(__file__).parent / "index.html"


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind

    @classmethod
    def of(cls, exc: Exception) -> "APIError":
        """Any exception as an API error: user errors are 400, anything else 500."""
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, GraphLLMError):
            return cls(400, str(exc))
        return cls(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    def payload(self) -> dict[str, Any]:
        """The error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}

    def response(self) -> "JSONResponse":
        """The JSON response for this error."""
        from starlette.responses import JSONResponse

        return JSONResponse(self.payload(), status_code=self.status)


# ---------------------------------------------------------------- request bodies
@functools.cache
def _bodies() -> tuple[type, type]:
    """The pydantic models of the chat and completion bodies; unknown OpenAI fields are accepted and ignored."""
    from pydantic import BaseModel, ConfigDict, Field

    class Body(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str | None = None
        max_tokens: int | None = None
        temperature: float | None = None
        top_p: float | None = None
        top_k: int = 0  # extension (llama.cpp, vLLM)
        repetition_penalty: float = 1.0  # extension
        seed: int | None = None
        stop: str | list[str] | None = None
        n: int = 1
        stream: bool = False
        stream_options: dict[str, Any] | None = None
        ignore_eos: bool = False  # extension, for benchmarks

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: str | list[dict[str, Any]] | None = None

    class ChatBody(Body):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: int | None = None

    class CompletionBody(Body):
        prompt: str | list[int] | list[str]

    return ChatBody, CompletionBody


def _sampling(body: Any, max_tokens: int | None) -> SamplingParams:
    """SamplingParams from a body (OpenAI defaults: temperature 1, top_p 1); validated."""
    if body.n != 1:
        raise APIError(400, "only n=1 is supported")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k,
                          repetition_penalty=body.repetition_penalty, seed=body.seed, max_tokens=max_tokens,
                          stop=stop, ignore_eos=body.ignore_eos).validate()


def _message_text(message: Any) -> str:
    """A message's text; content given as parts must be text parts."""
    if isinstance(message.content, list):
        if any(part.get("type") != "text" for part in message.content):
            raise APIError(400, "only text content parts are supported")
        return "".join(str(part.get("text", "")) for part in message.content)
    return message.content or ""


# ---------------------------------------------------------------- responses
class _Output:
    """Shapes one generation's results as chat or text completions, whole or as stream chunks."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int) -> None:
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def envelope(self, choices: list[dict], stream: bool, **extra: Any) -> dict[str, Any]:
        """The object around the choices."""
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def choice(self, text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
        """One choice: a message (chat), a delta (chat stream) or text."""
        if not self.chat:
            body: dict[str, Any] = {"text": text or ""}
        elif stream:
            body = {"delta": {} if text is None else {"content": text}}
        else:
            body = {"message": {"role": "assistant", "content": text}}
        return {"index": 0, **body, "logprobs": None, "finish_reason": finish}

    def usage(self, completion_tokens: int) -> dict[str, int]:
        """Token counts."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}


def _sse(data: Any) -> str:
    """One Server-Sent Event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(gen: "Generation", out: _Output, options: dict[str, Any]) -> AsyncIterator[str]:
    """SSE chunks of a generation, then [DONE]; a disconnect (task cancelled) cancels the generation.

    stream_options: include_usage adds a last chunk with the token counts; continuous_usage_stats
    (vLLM's extension) puts the counts so far on every chunk.
    """
    include_usage, continuous = bool(options.get("include_usage")), bool(options.get("continuous_usage_stats"))
    sent = 0
    try:
        if out.chat:
            first = out.choice(None, None, True)
            first["delta"] = {"role": "assistant", "content": ""}
            yield _sse(out.envelope([first], True))
        while chunks := await gen.ready():
            sent += sum(c.token is not None for c in chunks)
            text, finish = "".join(c.text for c in chunks), chunks[-1].finish_reason
            extra = {"usage": out.usage(sent)} if continuous else {}
            if text:
                yield _sse(out.envelope([out.choice(text, None, True)], True, **extra))
            if finish:
                yield _sse(out.envelope([out.choice(None if out.chat else "", finish, True)], True, **extra))
        if include_usage:
            yield _sse(out.envelope([], True, usage=out.usage(gen.completion_tokens)))
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the status line is sent: report it as an event
        yield _sse(APIError.of(exc).payload())
    finally:
        gen.cancel()


async def _until_disconnect(http: "Request") -> None:
    """Returns once the client has closed the connection."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _whole(gen: "Generation", out: _Output, http: "Request") -> "Response":
    """The full response; if the client leaves first, the generation is cancelled."""
    from starlette.responses import JSONResponse, Response

    chunks: list = []

    async def collect() -> None:
        chunks.extend([c async for c in gen])

    work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_until_disconnect(http))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        gen.cancel()
    if not work.done():
        work.cancel()
        return Response(status_code=499)
    work.result()
    text = "".join(c.text for c in chunks)
    return JSONResponse(out.envelope([out.choice(text, chunks[-1].finish_reason, False)], False,
                                     usage=out.usage(gen.completion_tokens)))


# ---------------------------------------------------------------- the app
def _auth_middleware(app: Any, api_key: str) -> Any:
    """ASGI wrapper: /v1/ requests need `Authorization: Bearer <api_key>` (401 in OpenAI's format)."""
    expected = f"Bearer {api_key}".encode()

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                error = APIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                 "invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await app(scope, receive, send)

    return wrapped


def create_app(engine: "Engine", model_name: str, api_key: str | None = None) -> Any:
    """The ASGI app serving `engine` under `model_name` (wrapped for the API key when one is set)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    ChatBody, CompletionBody = _bodies()  # noqa: N806 - classes
    app = FastAPI(title="graphllm", docs_url=None, redoc_url=None, openapi_url=None)
    tok = engine.llm.tokenizer

    async def error(_: Request, exc: Exception) -> JSONResponse:
        return APIError.of(exc).response()

    for kind in (APIError, GraphLLMError, Exception):
        app.add_exception_handler(kind, error)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join("the body is not valid JSON" if e["type"] == "json_invalid"
                             else f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return APIError(400, f"invalid request body: {problems}").response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    def check_model(body: Any) -> None:
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"The model '{body.model}' does not exist (this server has '{model_name}')",
                           "model_not_found")

    async def respond(body: Any, http: Request, ids: list[int], max_tokens: int | None, chat: bool) -> Response:
        params = _sampling(body, max_tokens)
        gen = engine.submit(ids, params)
        out = _Output(chat, model_name, len(ids))
        if body.stream:
            return StreamingResponse(_stream(gen, out, body.stream_options or {}), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(gen, out, http)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "graphllm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: Request) -> Response:
        check_model(body)
        messages = [{"role": m.role, "content": _message_text(m)} for m in body.messages]
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await respond(body, http, ids, limit, True)  # None: until the context is full

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: Request) -> Response:
        check_model(body)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported")
            prompt = prompt[0]
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if any(not 0 <= i < tok.vocab_size for i in ids):
            raise APIError(400, f"prompt token ids must be in [0, {tok.vocab_size})")
        limit = COMPLETIONS_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        return await respond(body, http, ids, limit, False)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(WEBUI.read_text(encoding="utf-8"))

    return _auth_middleware(app, api_key) if api_key else app
