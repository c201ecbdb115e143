"""`graphllm serve` / `graphllm webui` (and fastllm's `python -m graphllm.server|webui`): the OpenAI API and
the chat page over the batching engine."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GraphLLMError
from ..host import usable_cores
from ..runtime.sampling import SERVER_MAX_TOKENS
from ..server.app import STREAM_INTERVAL
from .common import (HelpFormatter, add_command, add_model_args, flag_model, graph_options, load_kwargs, load_llm,
                     print_notes, run_main)

if TYPE_CHECKING:
    import uvicorn

    from ..runtime.engine import Engine

COMMANDS = {"serve": "OpenAI-compatible HTTP server with continuous batching (and the chat page)",
            "webui": "the chat page in your browser, served with the same API"}


def add_server_args(p: argparse.ArgumentParser) -> None:
    """Model flags plus where and how to serve."""
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port; the URL is printed)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/ endpoints (default: none, open)")
    p.add_argument("-np", "--parallel", "--max-batch", dest="max_batch", type=int, default=8,
                   help="concurrent sequences (KV-cache slots)")
    p.add_argument("--max-step-tokens", type=int, default=128,
                   help="tokens per step: one per running reply, prompts in chunks in the rest (so long prompts "
                        "do not stall replies); at most the executor's packed-step size (128)")
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the file/folder name)")
    p.add_argument("--allowed-hosts", type=hosts_arg, default=None,
                   help="comma-separated Host header names accepted, '*' for any (default: localhost names and "
                        "the bound address when bound to loopback, else any); others get 403 (DNS rebinding)")
    p.add_argument("--max-body-bytes", type=positive_arg, default=4 << 20,
                   help="largest request body accepted, in bytes (default: 4 MiB); larger ones get 413")
    p.add_argument("--default-max-tokens", type=max_tokens_arg, default=SERVER_MAX_TOKENS,
                   help=f"tokens a chat completion without max_tokens may generate (default: {SERVER_MAX_TOKENS}; "
                        f"-1: until the context is full)")
    p.add_argument("--shutdown-grace", type=seconds_arg, default=5.0,
                   help="seconds running requests may finish after SIGTERM/SIGINT before they end with an error "
                        "(default: 5)")
    p.add_argument("--stream-interval", type=seconds_arg, default=STREAM_INTERVAL,
                   help="least seconds between a stream's events; the tokens generated meanwhile go out together "
                        f"(fewer writes and wake-ups per token; default: {STREAM_INTERVAL}; 0: an event every step)")
    p.add_argument("--replicas", type=positive_arg, default=None,
                   help="serve N replicas of the model on Ray Serve (pip install 'graphllm[ray]'), each with its own "
                        "engine, loaded from one compiled build (default: one process, no Ray)")
    p.add_argument("--threads-per-replica", type=positive_arg, default=None,
                   help="with --replicas: kernel threads and Ray CPUs of each replica (default: this machine's "
                        "usable cores divided among the replicas, at least 1)")
    p.add_argument("--ray-address", default=None,
                   help="with --replicas: the Ray cluster to join ('auto' or HEAD:6379, see `ray start`; default: a "
                        "local one, started and stopped with the server)")
    p.add_argument("--request-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one JSON line per API request on stderr (id, endpoint, status, tokens, times, finish "
                        "reason); metrics are at GET /metrics either way")


def hosts_arg(value: str) -> list[str]:
    """--allowed-hosts: comma-separated names (at least one)."""
    hosts = [h.strip() for h in value.split(",") if h.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError("expected comma-separated host names or '*'")
    return hosts


def positive_arg(value: str) -> int:
    """A positive integer."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def max_tokens_arg(value: str) -> int | None:
    """--default-max-tokens: a positive count, or -1 for none (until the context is full)."""
    return None if value.strip() == "-1" else positive_arg(value)


def seconds_arg(value: str) -> float:
    """A duration in seconds, >= 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return seconds


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `webui` to the subcommands."""
    for name, help_text in COMMANDS.items():
        p = add_command(sub, name, help_text)
        add_server_args(p)
        p.set_defaults(func=serve, open_page=name == "webui")


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


def _server(config: uvicorn.Config, engine: Engine, grace: float) -> uvicorn.Server:
    """uvicorn's server whose shutdown (SIGTERM, SIGINT) also drains the engine: queued requests end at once,
    running ones get ``grace`` seconds, then end with an error (streams: an error event and [DONE])."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            import asyncio

            draining = asyncio.ensure_future(asyncio.to_thread(engine.close, grace))
            await super().shutdown(sockets)
            await draining

    return Server(config)


def serve(a: argparse.Namespace) -> int:
    """Load the model, start the engine and serve until interrupted (with --replicas: on Ray Serve)."""
    if a.replicas is not None:
        return _serve_replicas(a)
    if a.threads_per_replica is not None or a.ray_address is not None:
        raise GraphLLMError("--threads-per-replica and --ray-address go with --replicas N")
    import uvicorn

    from ..runtime.engine import Engine
    from ..server.app import create_app, default_hosts
    from ..server.metrics import log_requests

    Engine.check_sizes(a.max_batch, a.max_step_tokens)  # before the slow part
    llm = load_llm(a, num_slots=a.max_batch)
    name = a.model_name or llm.model_path.name.removesuffix(".gguf")
    sock = _listen(a.host, a.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    engine = llm.engine
    engine.set_step_tokens(a.max_step_tokens)
    engine.start()
    if a.request_log:
        log_requests()
    app = create_app(engine, name, a.api_key, allowed_hosts=a.allowed_hosts or default_hosts(host),
                     max_body_bytes=a.max_body_bytes, default_max_tokens=a.default_max_tokens,
                     stream_interval=a.stream_interval)
    # the engine ends every request within the grace period; the extra seconds are for clients that stopped reading
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=a.shutdown_grace + 3)
    print(f"serving {name} at {url}/v1 (chat page: {url}/) with {a.max_batch} slots, "
          f"executor {a.executor}", file=sys.stderr, flush=True)
    if getattr(a, "open_page", False):
        _open_page(f"{url}/".replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:"))
    try:
        _server(config, engine, a.shutdown_grace).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    return 0


def _serve_replicas(a: argparse.Namespace) -> int:
    """--replicas: compile once here, then serve N replicas that load that build on Ray Serve until interrupted."""
    from ..pipeline import build

    try:
        from ..server.replicas import ReplicaSpec, check_reachable, serve_replicas
    except ImportError as e:
        if not (e.name or "").startswith("ray"):
            raise
        raise GraphLLMError(f"--replicas needs Ray Serve ({e.name} is not installed): "
                            f"pip install 'graphllm[ray]'") from None
    if a.threads is not None:
        raise GraphLLMError("with --replicas, give the threads of each replica with --threads-per-replica, not -t")
    from ..runtime.engine import Engine

    Engine.check_sizes(a.max_batch, a.max_step_tokens)  # before the slow part
    if a.ray_address:
        check_reachable(a.ray_address)
    threads = a.threads_per_replica or max(1, usable_cores() // a.replicas)
    built = build(flag_model(a), graph_options(a))
    load = {**load_kwargs(a, a.max_batch), "threads": threads, "show_progress": False}
    if a.executor == "tvm":  # the replicas load this folder and never compile
        from ..runtime.builds import check_artifact, compiled_build

        if a.artifact is None:
            load["artifact"] = str(compiled_build(built.graph, threads=threads, notes=built.notes,
                                                  show_progress=sys.stderr.isatty(), device=a.device,
                                                  cuda_archs=a.cuda_arch, tuned=not a.no_tuned))
        else:
            check_artifact(a.artifact, built.graph)
    print_notes(built.notes)
    sock = _listen(a.host, a.port)  # checks the address now, and picks the port for --port 0
    host, port = sock.getsockname()[:2]
    sock.close()
    from ..server.app import default_hosts

    model = str(built.model.path)
    name = a.model_name or Path(model).name.removesuffix(".gguf")
    spec = ReplicaSpec(model=model, load=load, model_name=name, max_step_tokens=a.max_step_tokens,
                       api_key=a.api_key, allowed_hosts=a.allowed_hosts or default_hosts(host),
                       max_body_bytes=a.max_body_bytes, default_max_tokens=a.default_max_tokens,
                       shutdown_grace=a.shutdown_grace, request_log=a.request_log,
                       stream_interval=a.stream_interval)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def ready() -> None:
        plural = "" if threads == 1 else "s"
        print(f"serving {name} at {url}/v1 (chat page: {url}/) with {a.replicas} replicas on Ray Serve, each with "
              f"{a.max_batch} slots and {threads} thread{plural}, executor {a.executor}", file=sys.stderr, flush=True)
        if getattr(a, "open_page", False):
            _open_page(f"{url}/".replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:"))

    serve_replicas(spec, replicas=a.replicas, threads=threads, max_batch=a.max_batch, host=host, port=port,
                   address=a.ray_address, ready=ready)
    return 0


def _open_page(url: str) -> None:
    """`webui`: open the chat page in the user's browser when there is a display, else say where it is."""
    import webbrowser

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32"):
        print(f"opening {url} in your browser", file=sys.stderr, flush=True)
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()  # the socket already listens
    else:
        print(f"no display: open {url} in a browser", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, command: str = "serve") -> int:
    """fastllm-style entry point: `python -m graphllm.server|webui -p PATH [-t N] [--custom FILE]`."""
    parser = argparse.ArgumentParser(prog=f"python -m graphllm.{'server' if command == 'serve' else command}",
                                     description=COMMANDS[command], formatter_class=HelpFormatter)
    add_server_args(parser)
    parser.set_defaults(open_page=command == "webui")
    a = parser.parse_args(argv)
    return run_main(lambda: serve(a))
