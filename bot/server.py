"""The deskmate server: HTTP routes and websockets on one port, on one asyncio loop.

:class:`App` holds what every connection shares (settings, Redis store, live
hub, turn runner, metrics, per-address limits); :func:`running` is its lifespan —
start in order, stop in reverse, finishing running turns first on shutdown.

Before a socket's handshake is accepted, :meth:`App.http` checks the browser
``Origin`` against ``DESKMATE_ALLOWED_ORIGINS`` (403 when refused) and the client
address's open connections against ``DESKMATE_MAX_CONNECTIONS_PER_IP`` (429).

On shutdown (SIGTERM) the instance first turns unhealthy and refuses new sockets
(503 on ``/healthz`` and on handshakes), so that a load balancer sends new customers
elsewhere; then running turns finish; then the open sockets close with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import json
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bot import heap
from bot.agent_socket import AgentConnection
from bot.brain import Brain, actions_environment, load_brain
from bot.chat import ChatConnection
from bot.config import HARD_MAX_FRAME, Settings
from bot.embedded_redis import EmbeddedRedis
from bot.errors import ConfigError
from bot.hub import Hub
from bot.learning import Learning
from bot.metrics import Metrics
from bot.security import AddressLimits, OriginPolicy, client_address
from bot.store import Store
from bot.turns import TurnRunner
from model.threads import on_own_thread

log = logging.getLogger("deskmate.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC = {  # path -> (file in web/, content type)
    "/widget.js": ("widget.js", "application/javascript; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/agent": ("agent.html", "text/html; charset=utf-8"),
    "/agent.js": ("agent.js", "application/javascript; charset=utf-8"),
    "/agent.css": ("agent.css", "text/css; charset=utf-8"),
}
STATIC_DIR = "static"  # web/static/**: pictures and other files served under /static/
STATIC_TYPES = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp",
                ".css": "text/css; charset=utf-8", ".js": "application/javascript; charset=utf-8"}
SOCKETS = {"/ws/chat", "/ws/agent"}
SWEEP_EVERY = 60.0


class App:
    """Everything the connections of one server process share."""

    def __init__(self, settings: Settings, store: Store, brain: Brain) -> None:
        self.settings = settings
        self.store = store
        self.instance = uuid.uuid4().hex[:8]
        self.metrics = Metrics()
        self.model = getattr(brain, "model", None)  # the language model (ads for consoles); None: off
        self.metrics.watch_model(self.model)
        self.hub = Hub(store.redis)
        self.runner = TurnRunner(store, brain.pipeline, self.metrics,
                                 understand=brain.understand, lock_ttl=settings.turn_lock_ttl,
                                 nlu_batches=settings.nlu_batches)
        self.assets: dict[str, bytes] = {}
        self.origins = OriginPolicy(settings.allowed_origins)
        self.limits = AddressLimits(rate=settings.rate_ip_messages, window=settings.rate_ip_window,
                                    max_connections=settings.max_connections_per_ip)
        self._watchers: set[asyncio.Future[None]] = set()  # release a connection slot on close
        self.draining = False  # shutting down: unhealthy, and no new sockets
        # Knowledge learned from agents (bot/learning.py): proposals, and approved entries
        # added to this process's index as any instance approves them.
        self.learning = Learning(store, self.hub, brain.pipeline, getattr(brain, "embed", None),
                                 classify=self.runner.understand)

    def encode(self, frame: dict[str, Any]) -> str:
        return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))

    def load_assets(self) -> None:
        for path, (name, _type) in STATIC.items():
            file = WEB_DIR / name
            if file.is_file():
                self.assets[path] = file.read_bytes()
            else:
                log.warning("web asset %s is missing; %s will answer 404", file, path)
        # Read once at start (a few hundred KB): no file system access per request, and no
        # request path ever reaches the file system, so nothing outside web/static/ is served.
        folder = WEB_DIR / STATIC_DIR
        for file in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if file.is_file() and file.suffix in STATIC_TYPES:
                self.assets["/" + file.relative_to(WEB_DIR).as_posix()] = file.read_bytes()

    # -- HTTP -----------------------------------------------------------------

    def client_key(self, connection: ServerConnection) -> str:
        """The address ``connection`` counts against (see :func:`bot.security.client_address`)."""
        headers = connection.request.headers if connection.request else None
        return client_address(connection.remote_address, headers,
                              trust_proxy=self.settings.trust_proxy)

    async def http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in SOCKETS:
            if self.draining:
                # A socket opened now would be closed within seconds, its messages left for
                # another instance: the client (or nginx, proxy_next_upstream) goes there now.
                self.metrics.errors.labels("draining").inc()
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"shutting down\n",
                                 "text/plain; charset=utf-8", retry_after=1)
            return self._admit(connection, request)  # None: go on with the websocket handshake
        if path == "/healthz":
            ok = await self.store.ping()
            self.metrics.redis_up.set(1 if ok else 0)
            state = "draining" if self.draining else "ok" if ok else "unhealthy"
            body = {"status": state, "redis": "ok" if ok else "down", "instance": self.instance}
            healthy = ok and not self.draining
            status = http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, json.dumps(body).encode(), "application/json")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, self.metrics.render(),
                             "text/plain; version=0.0.4; charset=utf-8")
        if path == "/":
            return _response(http.HTTPStatus.FOUND, b"", "text/plain", location="/demo")
        if path in self.assets:
            kind = STATIC[path][1] if path in STATIC else STATIC_TYPES[Path(path).suffix]
            return _response(http.HTTPStatus.OK, self.assets[path], kind)
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        # Headers.get() raises on a header sent twice. A browser sends one Origin: two are
        # no page's, so refused, as is a same-origin claim on a request with two Hosts.
        origins, hosts = request.headers.get_all("Origin"), request.headers.get_all("Host")
        origin = origins[0] if len(origins) == 1 else None
        host = hosts[0] if len(hosts) == 1 else None
        if len(origins) > 1 or not self.origins.allows(origin, host):
            self.metrics.errors.labels("forbidden_origin").inc()
            log.debug("refused a socket from origin %.100r", ", ".join(origins))
            return _response(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n",
                             "text/plain; charset=utf-8")
        key = client_address(connection.remote_address, request.headers,
                             trust_proxy=self.settings.trust_proxy)
        if not self.limits.open(key):
            self.metrics.errors.labels("too_many_connections").inc()
            log.debug("refused a socket: %d connections open from one address",
                      self.settings.max_connections_per_ip)
            return _response(http.HTTPStatus.TOO_MANY_REQUESTS,
                             b"too many connections from your address\n",
                             "text/plain; charset=utf-8", retry_after=10)
        # The slot is held until the TCP connection closes, whether or not the handshake
        # completes (a failed upgrade never reaches handle(), so handle() cannot free it).
        closed = asyncio.ensure_future(connection.wait_closed())
        self._watchers.add(closed)

        def release(done: asyncio.Future[None]) -> None:
            self._watchers.discard(done)
            self.limits.close(key)

        closed.add_done_callback(release)
        return None

    # -- websockets -----------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        path = ws.request.path.split("?", 1)[0] if ws.request else ""
        gauge = self.metrics.connections.labels(path.rsplit("/", 1)[-1])
        gauge.inc()
        try:
            handler = AgentConnection if path == "/ws/agent" else ChatConnection
            await handler(ws, self).serve()
        except Exception:
            log.exception("connection handler crashed")
            await ws.close(1011, "internal error")
        finally:
            gauge.dec()

    async def sweep(self) -> None:
        """Drop expired sessions from the live index, now and then (any instance may)."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            with contextlib.suppress(Exception):
                await self.store.sweep_expired()


def _response(status: http.HTTPStatus, body: bytes, content_type: str, *,
              location: str | None = None, retry_after: int | None = None) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Cache-Control"] = "no-cache"
    if location:
        headers["Location"] = location
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(status.value, status.phrase, headers, body)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, redis_url: str | None = None,
                  brain: Brain | None = None) -> AsyncIterator[tuple[App, Server]]:
    """Start a server. On exit: turn unhealthy and refuse new sockets, finish running
    turns, close the sockets, then Redis, in that order.

    Raises ConfigError naming DESKMATE_PORT (or DESKMATE_HOST) when it cannot listen."""
    url = redis_url or settings.redis_url
    if url is None:
        raise ValueError("running() needs a Redis URL; start EmbeddedRedis first")
    if brain is None:
        # On a short-lived thread: torch's loading work leaves no OpenMP team behind to
        # slow the language model's (model/threads.py).
        brain = await asyncio.to_thread(on_own_thread, load_brain, settings)
    actions_environment(url, settings.key_prefix)
    store = Store.from_url(url, prefix=settings.key_prefix, ttl=settings.session_ttl)
    app = App(settings, store, brain)
    app.load_assets()
    server: Server | None = None
    sweeper: asyncio.Task[None] | None = None
    try:
        await app.hub.start()
        await app.learning.start()  # every approved entry is in the index before the first turn
        sweeper = asyncio.create_task(app.sweep())
        server = await listen(app, settings)
        yield app, server
    finally:
        # Unhealthy first, while still listening: health checks and new customers get a 503
        # (not a refused connection that looks like a crash) and go to another instance,
        # while the turns running here finish and are streamed to their customers.
        app.draining = True
        await app.runner.drain_all(settings.shutdown_grace)
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await app.learning.stop()
        await app.hub.stop()
        await store.close()


async def listen(app: App, settings: Settings) -> Server:
    """The websockets server of ``app`` on the configured address."""
    try:
        return await serve(
            app.handle, settings.host, settings.port,
            process_request=app.http,
            max_size=HARD_MAX_FRAME,
            ping_interval=20, ping_timeout=20, close_timeout=5,
            server_header="deskmate",
        )
    except OSError as exc:
        # asyncio's message repeats the address; the errno says it shortest. A host name
        # that does not resolve (socket.gaierror) has a negative errno and its own text.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("DESKMATE_PORT", f"cannot listen on {where}: {reason}; another process "
                              "(another deskmate?) has the port: stop it, or choose another port "
                              "(DESKMATE_PORT or --port)") from None
        if exc.errno == errno.EACCES:
            raise ConfigError("DESKMATE_PORT", f"cannot listen on {where}: {reason} (ports below 1024 "
                              "need privileges); choose a port from 1024 up") from None
        raise ConfigError("DESKMATE_HOST", f"cannot listen on {where}: {reason}; DESKMATE_HOST must be "
                          "an address of this machine (127.0.0.1, 0.0.0.0, ::)") from None


def bound_port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


async def serve_until_signalled(settings: Settings, redis_url: str, brain: Brain) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running(settings, redis_url=redis_url, brain=brain) as (app, server):
            log.info("deskmate %s listening on http://%s:%d (demo: /demo)", app.instance,
                     settings.host, bound_port(server))
            await stop.wait()
            log.info("shutting down: refusing new connections, finishing running turns, "
                     "then closing connections")
    finally:
        await brain.close()


def run(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT, with an embedded Redis when no URL is set.

    The project and its models load first, so a project that is not ready stops the
    start before anything else is started. They load on a short-lived thread, so the
    event loop's thread keeps no OpenMP team from torch's loading work (model/threads.py)."""
    brain = on_own_thread(load_brain, settings)
    heap.settle()  # the models and the project stay loaded: keep the collector off them
    if settings.redis_url:
        asyncio.run(serve_until_signalled(settings, settings.redis_url, brain))
        return
    with EmbeddedRedis(settings.data_dir) as embedded:
        log.info("using embedded Redis at %s", embedded.url)
        asyncio.run(serve_until_signalled(settings, embedded.url, brain))
