"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine, plus the chat page at `/`.

`graphllm serve -m MODEL` or `python -m graphllm.server -p PATH`; endpoints: GET /v1/models,
POST /v1/chat/completions, POST /v1/completions (both with `stream`), GET /health, GET /metrics (Prometheus;
open like /health: the API key guards /v1/ only), GET / (web UI, its vendored scripts under /static/) and
GET /v1/graphllm/defaults (the chat defaults the page starts from).
Chat completions take `tools` (runtime/toolcalls.py finds the call format, parses and constrains calls).
FastAPI and pydantic are imported only when an app is made, so `graphllm`'s other commands start fast.
Every failure a client can cause is answered in OpenAI's error format and leaves the connection usable;
prompt work (chat template, tokenization) runs in a thread, so the event loop (and /health) never stalls.
"""

import asyncio
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GraphLLMError
from ..runtime.engine import EngineClosed
from ..runtime.generate import Chunk
from ..runtime.grammar import compile_grammar
from ..runtime.sampling import COMPLETIONS_MAX_TOKENS, RANDOM_SEED, SERVER_MAX_TOKENS, SamplingParams, chat_sampling
from ..runtime.toolcalls import ToolCall, ToolCallParser, template_tool_calls, tool_use
from .logprobs import chat_logprobs, completion_logprobs
from .request_fields import request_grammar, unsupported_field

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from ..runtime.engine import Engine
    from ..runtime.engine import Request as Generation
    from .metrics import RequestRecord, ServerMetrics

WEBUI = Path(__file__).parent / "index.html"
WEBUI_STATIC = Path(__file__).parent / "static"  # the page's vendored libraries (see VENDORED.md there)
MAX_BODY_BYTES = 4 << 20  # the default request body limit (serve's --max-body-bytes)
# least seconds between a stream's events (serve's --stream-interval): 50 a second at most, so a fast decode sends
# a few tokens an event; each event costs a wake-up and a write here and a read in the client, on the cores the
# kernels use (1 client, 2 cores: ~10% faster than an event per step)
STREAM_INTERVAL = 0.02
CHAT_ROLES = ("system", "user", "assistant", "tool")
DEPRECATED_TOOL_FIELDS = ("functions", "function_call")  # OpenAI's deprecated API, replaced by tools
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
log = logging.getLogger("graphllm.server")


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param
        self.headers = headers

    @classmethod
    def of(cls, exc: Exception) -> "APIError":
        """Any exception as an API error: user errors are 4xx, a shutdown 503, anything else 500 (logged)."""
        from fastapi.exceptions import RequestValidationError
        from starlette.exceptions import HTTPException

        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, RequestValidationError):
            problems = "; ".join("the body is not valid JSON" if e["type"] == "json_invalid"
                                 else f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                                 for e in exc.errors())
            return cls(400, f"invalid request body: {problems}")
        if isinstance(exc, HTTPException):
            return cls(exc.status_code, str(exc.detail), headers=exc.headers)
        if isinstance(exc, EngineClosed):
            return cls(503, "the server is shutting down; the request was not completed", "server_shutting_down",
                       "server_error")
        if isinstance(exc, GraphLLMError):
            return cls(400, str(exc), param=getattr(exc, "param", None))
        log.error("internal error", exc_info=exc)
        return cls(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    def payload(self) -> dict[str, Any]:
        """The error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> "JSONResponse":
        """The JSON response for this error."""
        from starlette.responses import JSONResponse

        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------- request bodies
@functools.cache
def _bodies() -> tuple[type, type]:
    """The pydantic models of the chat and completion bodies; other fields land in model_extra (see check_body)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Body(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str | None = None
        max_tokens: int | None = None
        temperature: float | None = None
        top_p: float | None = None
        top_k: int = 0  # extension (llama.cpp, vLLM)
        repetition_penalty: float = 1.0  # extension
        seed: int | None = None  # -1: random (llama.cpp)
        stop: str | list[str] | None = None
        n: int = 1
        stream: bool = False
        stream_options: dict[str, Any] | None = None
        ignore_eos: bool = False  # extension, for benchmarks
        skip_special_tokens: bool = True  # extension (vLLM)
        response_format: dict[str, Any] | None = None
        grammar: dict[str, Any] | str | None = None  # extension: {"type": "lark"|"gbnf"|"regex", "value": TEXT}

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: str | list[dict[str, Any]] | None = None
        name: str | None = None  # the participant's name: not used, but a tool result's (the function) is rendered
        tool_calls: Any = None  # an assistant's calls, checked by toolcalls.template_tool_calls
        tool_call_id: Any = None  # the call a tool result answers

    class ChatBody(Body):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: int | None = None
        tools: Any = None  # checked by toolcalls.check_tools, which names the bad field
        tool_choice: Any = None
        parallel_tool_calls: Any = True
        logprobs: bool | None = None
        top_logprobs: int | None = None

    class CompletionBody(Body):
        prompt: str | list[int] | list[str]
        logprobs: int | None = None

    return ChatBody, CompletionBody


def _sampling(body: Any, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """SamplingParams from a body (OpenAI defaults: temperature 1, top_p 1) and its grammar; validated."""
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k,
                          repetition_penalty=body.repetition_penalty, seed=body.seed, max_tokens=max_tokens,
                          stop=stop, ignore_eos=body.ignore_eos, skip_special_tokens=body.skip_special_tokens,
                          grammar=request_grammar(body.response_format, body.grammar), logprobs=logprobs).validate()


def _chat_logprobs(body: Any) -> int | None:
    """The alternatives per token a chat body asks for (None: no logprobs); top_logprobs needs logprobs true."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def _refuse_unsupported(fields: dict[str, Any] | None, where: str = "") -> None:
    """400 naming the first of these unknown fields that asks for something this server does not implement."""
    problem = unsupported_field(fields)
    if problem is not None:
        name, message = problem
        raise APIError(400, where + message, param=where + name)


def _check_text(value: Any, path: str = "") -> None:
    """400 naming the field when a string in this parsed JSON is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise APIError(400, f"{path or 'body'} is not valid text: it holds a lone surrogate "
                                f"(\\u{ord(value[e.start]):04x}) at character {e.start}", param=path or None) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{path}[{i}]")


def _no_functions(fields: dict[str, Any] | None, where: str = "") -> None:
    """400 naming the first field of the deprecated function-calling API present (tools replace it)."""
    for name in DEPRECATED_TOOL_FIELDS:
        if (fields or {}).get(name) is not None:
            raise APIError(400, f"{where}{name} is not supported (OpenAI's deprecated API): use tools and "
                                f"tool_choice", param=where + name)


def _chat_messages(messages: Sequence[Any], tools_allowed: bool) -> list[dict[str, Any]]:
    """The messages as the chat template takes them (assistant tool calls, tool results); 400 naming the field
    of a role or content not allowed, or of a tool message for a template without tools."""
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]."
        extra = message.model_extra or {}
        _no_functions(extra, where)
        _refuse_unsupported(extra, where)
        if message.role not in CHAT_ROLES:
            raise APIError(400, f"{where}role must be one of {', '.join(map(repr, CHAT_ROLES))}, got {message.role!r}",
                           param=where + "role")
        calls = message.tool_calls or None  # an empty list is no calls
        if calls is not None and message.role != "assistant":
            raise APIError(400, f"{where}tool_calls is only allowed on assistant messages", param=where + "tool_calls")
        if (calls is not None or message.role == "tool") and not tools_allowed:
            raise APIError(400, f"{where}{'role' if calls is None else 'tool_calls'}: this model's chat template does "
                                f"not support tools", param=where + ("role" if calls is None else "tool_calls"))
        if calls is not None:
            out.append({"role": "assistant", "content": None if message.content is None else _message_text(
                message.content, where + "content"), "tool_calls": template_tool_calls(calls, where + "tool_calls")})
            continue
        out.append({"role": message.role, "content": _message_text(message.content, where + "content")})
        if message.role == "tool":
            if not isinstance(message.tool_call_id, str):
                raise APIError(400, f"{where}tool_call_id must be the id of the call answered", param=where +
                               "tool_call_id")
            out[-1].update(tool_call_id=message.tool_call_id,
                           name=message.name or _called_name(out, message.tool_call_id))
    return out


def _called_name(messages: list[dict[str, Any]], call_id: str) -> str | None:
    """The function name of the earlier assistant tool call with this id (templates print it on the result)."""
    return next((c["function"]["name"] for m in messages for c in m.get("tool_calls", ()) if c["id"] == call_id), None)


def _message_text(content: Any, where: str) -> str:
    """A message's text: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    got = "null" if content is None else "other content parts"
    raise APIError(400, f"{where} must be a string or a list of text parts, got {got}", param=where)


# ---------------------------------------------------------------- responses
class _Output:
    """Shapes one generation's results as chat or text completions, whole or as stream chunks."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int, tokenizer: Any = None,
                 tools: ToolCallParser | None = None) -> None:
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.tokenizer = tokenizer  # set when the tokens' logprobs are reported
        self.offset = 0  # the completion's text_offset so far
        self.tools = tools  # splits the text into content and tool calls, when the request has tools
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def logprobs(self, chunks: Sequence[Chunk]) -> dict[str, Any] | None:
        """The logprobs of these chunks' tokens in the endpoint's shape (None when not asked for)."""
        if self.tokenizer is None:
            return None
        if self.chat:
            return chat_logprobs(self.tokenizer, chunks)
        shaped = completion_logprobs(self.tokenizer, chunks, self.offset)
        if shaped["tokens"]:
            self.offset = shaped["text_offset"][-1] + len(shaped["tokens"][-1])
        return shaped

    def envelope(self, choices: list[dict], stream: bool, **extra: Any) -> dict[str, Any]:
        """The object around the choices."""
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def choice(self, text: str | None, finish: str | None, stream: bool,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """One choice: a message (chat), a delta (chat stream) or text, with its tokens' logprobs if any."""
        if not self.chat:
            body: dict[str, Any] = {"text": text or ""}
        elif stream:
            body = {"delta": {} if text is None else {"content": text}}
        else:
            body = {"message": {"role": "assistant", "content": text}}
        return {"index": 0, **body, "logprobs": logprobs, "finish_reason": finish}

    def split(self, text: str, finish: str | None) -> tuple[str, list[ToolCall], str | None]:
        """Text as content and tool calls (``finish`` set: the last text) and the finish reason: "tool_calls"
        when the generation stopped after making calls."""
        if self.tools is None:
            return text, [], finish
        content, calls = self.tools.feed(text)
        if finish:
            rest, more = self.tools.finish()
            content, calls = content + rest, calls + more
        return content, calls, "tool_calls" if finish == "stop" and self.tools.calls else finish

    def call_deltas(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """Stream choices for new tool calls: each one's id and name, then its arguments (OpenAI's chunking)."""
        first = len(self.tools.calls) - len(calls) if self.tools else 0
        deltas = []
        for index, call in enumerate(calls, first):
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            args = {"index": index, "function": {"arguments": call.arguments}}
            deltas += [{"tool_calls": [head]}, {"tool_calls": [args]}]
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]

    def usage(self, completion_tokens: int) -> dict[str, int]:
        """Token counts."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}


def _sse(data: Any) -> str:
    """One Server-Sent Event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(gen: "Generation", out: _Output, options: dict[str, Any], record: "RequestRecord",
                  interval: float) -> AsyncIterator[str]:
    """SSE chunks of a generation, then [DONE]; a disconnect (task cancelled) cancels the generation.
    Events are ``interval`` seconds apart at least (the tokens of the pause go out as one; the first at once):
    fewer wake-ups and writes per token, on the server and the client.

    stream_options: include_usage adds a last chunk with the token counts; continuous_usage_stats
    (vLLM's extension) puts the counts so far on every chunk.
    """
    include_usage, continuous = bool(options.get("include_usage")), bool(options.get("continuous_usage_stats"))
    sent, loop, last = 0, asyncio.get_running_loop(), -interval
    try:
        if out.chat:
            first = out.choice(None, None, True)
            first["delta"] = {"role": "assistant", "content": ""}
            yield _sse(out.envelope([first], True))
        while True:
            if interval and (pause := last + interval - loop.time()) > 0:
                await asyncio.sleep(pause)
            if not (chunks := await gen.ready()):
                break
            last = loop.time()
            sent += sum(c.token is not None for c in chunks)
            if sent:
                record.token_arrived()
            text, calls, finish = out.split("".join(c.text for c in chunks), chunks[-1].finish_reason)
            extra = {"usage": out.usage(sent)} if continuous else {}
            logprobs = out.logprobs(chunks)
            if text or (logprobs and any(logprobs.values())):
                yield _sse(out.envelope([out.choice(text, None, True, logprobs)], True, **extra))
            for delta in out.call_deltas(calls):
                yield _sse(out.envelope([delta], True, **extra))
            if finish:
                yield _sse(out.envelope([out.choice(None if out.chat else "", finish, True)], True, **extra))
        if include_usage:
            yield _sse(out.envelope([], True, usage=out.usage(gen.completion_tokens)))
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the status line is sent: report it as an event, then end
        yield _sse(APIError.of(exc).payload())
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()


async def _until_disconnect(http: "Request") -> None:
    """Returns once the client has closed the connection."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _whole(gen: "Generation", out: _Output, http: "Request", record: "RequestRecord") -> "Response":
    """The full response; if the client leaves first, the generation is cancelled."""
    from starlette.responses import JSONResponse, Response

    chunks: list = []

    async def collect() -> None:
        async for chunk in gen:
            record.token_arrived()
            chunks.append(chunk)

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
    text, calls, finish = out.split("".join(c.text for c in chunks), chunks[-1].finish_reason)
    choice = out.choice(text or (None if calls else text), finish, False, out.logprobs(chunks))
    if calls:
        choice["message"]["tool_calls"] = [call.openai() for call in calls]
    return JSONResponse(out.envelope([choice], False, usage=out.usage(gen.completion_tokens)))


# ---------------------------------------------------------------- the app
ASGIApp = Any  # an ASGI application: async (scope, receive, send)


def _auth_middleware(app: ASGIApp, api_key: str) -> ASGIApp:
    """ASGI wrapper: /v1/ requests need `Authorization: Bearer <api_key>` (scheme in any case; 401 otherwise)."""
    expected = api_key.encode()

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), expected):
                error = APIError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                 "invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await app(scope, receive, send)

    return wrapped


def _host_name(host: bytes) -> str:
    """The name in a Host header, without its port or IPv6 brackets, lower-cased."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _host_middleware(app: ASGIApp, allowed: frozenset[str]) -> ASGIApp:
    """ASGI wrapper: requests whose Host header names none of ``allowed`` get 403 (DNS rebinding)."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = _host_name(dict(scope["headers"]).get(b"host", b""))
            if host not in allowed:
                error = APIError(403, f"the Host header {host!r} is not allowed; start the server with "
                                      f"--allowed-hosts naming it (or '*' for any)", "host_not_allowed",
                                 "permission_error")
                await error.response()(scope, receive, send)
                return
        await app(scope, receive, send)

    return wrapped


def _body_limit_middleware(app: ASGIApp, limit: int) -> ASGIApp:
    """ASGI wrapper: a body over ``limit`` bytes gets 413 before it is parsed: at once when Content-Length
    says so, else as soon as the bytes received pass it (the connection is then closed)."""
    from starlette.exceptions import HTTPException

    message = f"the request body exceeds the server's limit of {limit} bytes (--max-body-bytes)"
    too_large = {"status_code": 413, "detail": message, "headers": {"Connection": "close"}}

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if int(length) > limit:  # the HTTP parser has checked that it is a number
            await APIError.of(HTTPException(**too_large)).response()(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:
                raise HTTPException(**too_large)
            return event

        await app(scope, counted, send)

    return wrapped


def _guarded_route() -> type:
    """The FastAPI route class whose handlers answer every exception as an API error (none reaches uvicorn,
    which would log a traceback and drop the keep-alive connection)."""
    from fastapi.routing import APIRoute

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Any:
            handler = super().get_route_handler()

            async def guarded(request: Any) -> "Response":
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - answered in OpenAI's format
                    return APIError.of(exc).response()

            return guarded

    return GuardedRoute


def default_hosts(bound: str) -> frozenset[str] | None:
    """The Host names allowed by default: the local names and ``bound`` when it is a loopback address;
    None (any) when the server listens beyond this machine."""
    import ipaddress

    try:
        loopback = bound in LOCAL_HOSTS or ipaddress.ip_address(bound).is_loopback
    except ValueError:
        return None
    return frozenset((*LOCAL_HOSTS, bound.lower())) if loopback else None


def create_app(engine: "Engine", model_name: str, api_key: str | None = None, *,
               allowed_hosts: Sequence[str] | None = LOCAL_HOSTS, max_body_bytes: int = MAX_BODY_BYTES,
               default_max_tokens: int | None = SERVER_MAX_TOKENS, instance: str | None = None,
               stream_interval: float = STREAM_INTERVAL, metrics: "ServerMetrics | None" = None) -> ASGIApp:
    """The ASGI app serving `engine` under `model_name`: Host check (None or '*': any host), API key (when
    set), body size limit; chat completions without max_tokens stop after ``default_max_tokens`` (None: none).
    ``instance`` names this server (replica) in its metrics and log lines (default: host:pid), unless the
    caller brings its own ``metrics``; streams send an event every ``stream_interval`` seconds at most (0: every
    step)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from .metrics import CONTENT_TYPE, RECORD, ServerMetrics

    ChatBody, CompletionBody = _bodies()  # noqa: N806 - classes
    app = FastAPI(title="graphllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = _guarded_route()
    metrics = metrics or ServerMetrics(engine.stats, model_name, instance)
    tok, context = engine.llm.tokenizer, engine.llm.max_context
    # no text longer than this fits the context, as no token stands for more characters than its vocabulary
    # string (times 4: normalization may shrink text, at most 3 jamo into 1 Hangul syllable)
    max_chars = 4 * context * max(len(tok.token_text(i)) for i in range(tok.vocab_size))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return APIError.of(exc).response()

    def check_body(body: Any) -> None:
        _check_text(body.model_dump())
        _no_functions(body.model_extra)
        _refuse_unsupported(body.model_extra)
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"The model '{body.model}' does not exist (this server has '{model_name}')",
                           "model_not_found", param="model")

    def encode(text: str) -> list[int]:  # the tokenizer holds the GIL while it runs: never on a text that cannot fit
        if len(text) > max_chars:
            raise APIError(400, f"the prompt has {len(text)} characters, more than the context of {context} tokens "
                                f"can hold; shorten it or raise --max-context")
        return tok.encode(text)

    def chat_ids(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        return encode(tok.apply_chat_template(messages, add_generation_prompt=True, tools=tools))

    def prompt_ids(prompt: str | list[int]) -> list[int]:
        ids = encode(prompt) if isinstance(prompt, str) else list(prompt)
        if any(not 0 <= i < tok.vocab_size for i in ids):
            raise APIError(400, f"prompt token ids must be in [0, {tok.vocab_size})", param="prompt")
        return ids

    async def respond(body: Any, http: Request, ids: list[int], params: SamplingParams, chat: bool,
                      tools: ToolCallParser | None = None) -> Response:
        if params.grammar is not None or params.logprobs is not None:
            # off the event loop: llguidance's view of the tokenizer (built once), the grammar (cached; a bad one: 400)
            await asyncio.to_thread(compile_grammar, tok, params.grammar)
        gen = engine.submit(ids, params)
        out = _Output(chat, model_name, len(ids), tok if params.logprobs is not None else None, tools)
        record = http.scope["state"][RECORD]
        record.attach(out.id, len(ids), gen)
        if body.stream:
            return StreamingResponse(_stream(gen, out, body.stream_options or {}, record, stream_interval),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(gen, out, http, record)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "graphllm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: Request) -> Response:
        check_body(body)
        tools = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls, tok)
        messages = _chat_messages(body.messages, tok.supports_tools)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _sampling(body, default_max_tokens if limit is None else limit, _chat_logprobs(body))
        if tools and (call_grammar := tools.grammar()):
            if params.grammar is not None:
                raise APIError(400, f"tool_choice {tools.choice!r} constrains the output to a tool call: it cannot be "
                                    f"combined with response_format or grammar", param="tool_choice")
            params.grammar = call_grammar
        ids = await asyncio.to_thread(chat_ids, messages, tools and tools.tools)
        return await respond(body, http, ids, params, True, tools and tools.parser())

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: Request) -> Response:
        check_body(body)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        params = _sampling(body, COMPLETIONS_MAX_TOKENS if body.max_tokens is None else body.max_tokens,
                           body.logprobs)
        ids = await asyncio.to_thread(prompt_ids, prompt)
        return await respond(body, http, ids, params, False)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.stats()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/graphllm/defaults")
    async def defaults() -> dict[str, Any]:
        """The sampling a conversation starts from (as `graphllm chat`): the model's generation_config over
        CHAT_SAMPLING, this server's default max_tokens (null: until the context is full), a random seed."""
        return {**chat_sampling(engine.llm.generation_config), "max_tokens": default_max_tokens,
                "seed": RANDOM_SEED}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(WEBUI.read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=WEBUI_STATIC), name="static")

    wrapped = _body_limit_middleware(app, max_body_bytes)
    if api_key:
        wrapped = _auth_middleware(wrapped, api_key)
    hosts = None if allowed_hosts is None or "*" in allowed_hosts else frozenset(h.lower() for h in allowed_hosts)
    return metrics.middleware(wrapped if hosts is None else _host_middleware(wrapped, hosts))
