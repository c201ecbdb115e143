"""`graphllm serve` / `graphllm webui` (and fastllm's `python -m graphllm.server|webui`): the OpenAI API and
the chat page over the batching engine."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from ..errors import GraphLLMError
from .common import add_model_args, load_llm, run_main

COMMANDS = {"serve": "OpenAI-compatible HTTP server with continuous batching (and the chat page)",
            "webui": "the chat page in your browser, served with the same API"}


def add_server_args(p: argparse.ArgumentParser) -> None:
    """Model flags plus where and how to serve."""
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port; the URL is printed)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ endpoints")
    p.add_argument("--max-batch", type=int, default=8, help="concurrent sequences (KV-cache slots)")
    p.add_argument("--max-step-tokens", type=int, default=128,
                   help="tokens per step: one per running reply, prompts in chunks in the rest (so long prompts "
                        "do not stall replies); at most the executor's packed-step size (128)")
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the file/folder name)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `webui` to the subcommands."""
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_server_args(p)
        p.set_defaults(func=serve)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound before uvicorn starts, so the printed port is the real one)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise GraphLLMError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


def serve(a: argparse.Namespace) -> int:
    """Load the model, start the engine and serve until interrupted."""
    import uvicorn

    from ..runtime.engine import Engine
    from ..server.app import create_app

    Engine.check_sizes(a.max_batch, a.max_step_tokens)  # before the slow part
    llm = load_llm(a, num_slots=a.max_batch)
    name = a.model_name or Path(llm.model.path).name.removesuffix(".gguf")
    sock = _listen(a.host, a.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    engine = llm.engine
    engine.set_step_tokens(a.max_step_tokens)
    engine.start()
    config = uvicorn.Config(create_app(engine, name, a.api_key), log_level="warning", access_log=False)
    print(f"serving {name} at {url}/v1 (chat page: {url}/) with {a.max_batch} slots, "
          f"executor {a.executor}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    return 0


def main(argv: list[str] | None = None, command: str = "serve") -> int:
    """fastllm-style entry point: `python -m graphllm.server|webui -p PATH [-t N] [--custom FILE]`."""
    parser = argparse.ArgumentParser(prog=f"python -m graphllm.{'server' if command == 'serve' else command}",
                                     description=COMMANDS[command])
    add_server_args(parser)
    a = parser.parse_args(argv)
    return run_main(lambda: serve(a))
