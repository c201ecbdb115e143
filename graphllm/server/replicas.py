"""Replicas on Ray Serve: each replica loads the model once (from one compiled build folder, never compiling),
runs its own batching engine and serves the app of app.py (the same routes, errors and limits), its responses
tagged with the replica's id; each publishes its metrics to a board actor, so any replica answers /metrics with
every live replica's series. Ray is imported by this module only: `graphllm serve` without --replicas never
loads it."""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from prometheus_client.metrics_core import Metric
from ray import serve

from ..errors import GraphLLMError
from ..host import usable_cores
from .app import ASGIApp, create_app
from .metrics import ServerMetrics, log_requests

REPLICA_HEADER = b"x-graphllm-replica"
APP_NAME = "graphllm"
# requests a replica takes beyond its KV slots: /health and /metrics scrapes (and a short engine queue) get through
# while every slot is generating, instead of waiting in Ray's queue behind the generations
SLOT_HEADROOM = 4
CONNECT_TIMEOUT_S = 5.0  # how long --ray-address may take to accept a connection
BOARD = "graphllm-metrics"  # the metrics board actor's name, in the namespace BOARD_NAMESPACE
BOARD_NAMESPACE = "graphllm"
PUBLISH_S = 1.0  # each replica publishes its metrics (and reads its peers') this often
STALE_S = 5.0  # a replica not heard from for this long is gone (killed): its series leave /metrics


@dataclasses.dataclass(frozen=True)
class ReplicaSpec:
    """What every replica loads and how it serves (sent to the replicas, so plain data)."""

    model: str  # the model file or folder
    load: dict[str, Any]  # LLM.load's keywords (artifact: the compiled build folder; threads: per replica)
    model_name: str
    max_step_tokens: int
    api_key: str | None
    allowed_hosts: Sequence[str] | None
    max_body_bytes: int
    default_max_tokens: int | None
    shutdown_grace: float
    request_log: bool  # one JSON line per API request on the replica's stderr (Ray shows it on the driver's)
    stream_interval: float


def tagged(app: ASGIApp, replica: str) -> ASGIApp:
    """ASGI wrapper: every HTTP response carries `x-graphllm-replica: <replica>`."""
    header = (REPLICA_HEADER, replica.encode())

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        async def send_tagged(event: dict) -> None:
            if event["type"] == "http.response.start":
                event = {**event, "headers": [*event.get("headers", []), header]}
            await send(event)

        await app(scope, receive, send_tagged if scope["type"] == "http" else send)

    return wrapped


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The replicas' latest metric families, as published every PUBLISH_S: an actor of the command, so it lives
    as long as the app."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[float, list[Metric]]] = {}

    def exchange(self, replica: str, families: list[Metric]) -> dict[str, list[Metric]]:
        """Note ``replica``'s families; return every live replica's (those heard from within STALE_S)."""
        now = time.monotonic()
        self.latest[replica] = (now, families)
        self.latest = {r: latest for r, latest in self.latest.items() if now - latest[0] < STALE_S}
        return {r: f for r, (_, f) in self.latest.items()}

    def remove(self, replica: str) -> None:
        """``replica`` stopped: its series leave /metrics at once."""
        self.latest.pop(replica, None)


class _Publisher(threading.Thread):
    """A replica's metrics sent to the board every PUBLISH_S (off the request path); the live replicas' come
    back, for its /metrics. A board that is gone (the command was killed) leaves this replica's own only."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__(name="graphllm-metrics-publisher", daemon=True)
        self.metrics = metrics
        self.board = ray.get_actor(BOARD, namespace=BOARD_NAMESPACE)
        self.peers: dict[str, list[Metric]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.peers = ray.get(self.board.exchange.remote(self.metrics.instance, self.metrics.families()),
                                     timeout=STALE_S)
            except ray.exceptions.RayError:
                self.peers = {}
            if self.stop.wait(PUBLISH_S):
                return

    def close(self) -> None:
        """Stop publishing and take this replica off the board."""
        self.stop.set()
        self.board.remove.remote(self.metrics.instance)


@serve.ingress()
class Replica:
    """One replica: the model and its engine, made once; the app is built over them by Ray Serve."""

    def __init__(self, spec: ReplicaSpec) -> None:
        from ..runtime.llm import LLM

        self.spec = spec
        llm = LLM.load(spec.model, **spec.load)
        self.engine = llm.engine
        self.engine.set_step_tokens(spec.max_step_tokens)
        self.engine.start()
        self.id = serve.get_replica_context().replica_id.unique_id
        if spec.request_log:
            log_requests()
        self.publisher = _Publisher(ServerMetrics(self.engine.stats, spec.model_name, self.id,
                                                  peers=lambda: self.publisher.peers))
        self.publisher.start()

    def __serve_build_asgi_app__(self) -> ASGIApp:
        app = create_app(self.engine, self.spec.model_name, self.spec.api_key, allowed_hosts=self.spec.allowed_hosts,
                         max_body_bytes=self.spec.max_body_bytes, default_max_tokens=self.spec.default_max_tokens,
                         stream_interval=self.spec.stream_interval, metrics=self.publisher.metrics)
        return tagged(app, self.id)

    def __del__(self) -> None:
        """Ray Serve stops the replica: its metrics leave the board, queued requests end at once, running ones
        within the grace period."""
        self.publisher.close()
        self.engine.close(self.spec.shutdown_grace)


def check_reachable(address: str) -> None:
    """GraphLLMError unless a Ray head answers at --ray-address HOST:PORT (or ray://HOST:PORT): ray.init would
    retry an unreachable address for minutes. "auto" is left to Ray, which fails fast when no cluster runs here."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise GraphLLMError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise GraphLLMError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}): start one there with "
                            f"`ray start --head`, or check --ray-address") from None


def serve_replicas(spec: ReplicaSpec, *, replicas: int, threads: int, max_batch: int, host: str, port: int,
                   address: str | None, ready: Callable[[], None]) -> None:
    """Run ``replicas`` copies of the app (``threads`` CPUs each) on Ray Serve at host:port, call ``ready``, and
    serve until SIGINT/SIGTERM. A cluster started here (no ``address``) stops with it; on an existing cluster
    only this app is removed."""
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                 **({} if address else {"num_cpus": usable_cores()}))
    except ConnectionError as e:  # e.g. --ray-address auto with no cluster running on this machine
        if address == "auto":
            raise GraphLLMError("--ray-address auto: no Ray cluster runs on this machine; start one with "
                                "`ray start --head`, or leave out --ray-address for a local one") from None
        raise GraphLLMError(f"cannot connect to a Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # ray.init's handler would exit without cleaning up
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if replicas * threads > cpus:
            raise GraphLLMError(f"{replicas} replicas of {threads} thread{'' if threads == 1 else 's'} need {replicas * threads} CPUs, but the "
                                f"Ray cluster has {cpus}: lower --replicas or --threads-per-replica, or add machines "
                                f"(ray start --address HEAD:6379) and pass --ray-address")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no lines per start step
        board = MetricsBoard.options(name=BOARD, namespace=BOARD_NAMESPACE).remote()
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        try:
            deployment = serve.deployment(Replica, name=APP_NAME, num_replicas=replicas,
                                          ray_actor_options={"num_cpus": threads},
                                          max_ongoing_requests=max_batch + SLOT_HEADROOM,
                                          graceful_shutdown_timeout_s=spec.shutdown_grace + 3,
                                          logging_config={"log_level": "WARNING", "enable_access_log": False})
            try:
                serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/")
            except RuntimeError as e:  # Ray Serve printed the replicas' tracebacks above
                raise GraphLLMError(f"the replicas did not start ({e}); the lines above say why") from None
            ready()
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            if address:
                serve.delete(APP_NAME)
                ray.kill(board)
            else:
                serve.shutdown()
    finally:
        ray.shutdown()
