"""``deskmate bench load``: many websocket customers against running deskmate servers.

A run is bounded: every scenario has a fixed count and duration, answers are
awaited for at most ``drain`` seconds, and everything the run started (servers,
an embedded Redis, its Redis keys) is stopped or deleted at the end, also on
failure or Ctrl-C.

Servers: by default each scenario gets fresh ``deskmate run`` processes (free
ports, the bot project given, a key prefix of their own, the language model off
except for the LM scenario) against ``$REDIS_URL`` or an embedded Redis; with
``urls`` the customers go to servers someone else runs. Customers are spread
over the servers round-robin, the way a load balancer without sticky sessions
would. The same customers then drive a bare websockets echo server
(:mod:`bot.echo_server`) as the transport's ceiling. After each deskmate run the
Redis check (:mod:`bot.loadgen_audit`) verifies what the customers were told.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot import heap
from bot.embedded_redis import EmbeddedRedis
from bot.errors import DeskmateError
from bot.loadgen_audit import audit
from bot.loadgen_customer import Customer
from bot.loadgen_procs import Child, Usage, deskmate_server, echo_server, raise_open_files
from bot.loadgen_scenarios import POOL_SECONDS, hold_connections, lm_streams, turn_rate
from bot.loadgen_texts import ScriptMix, demo_scripts, generative_texts, star_scripts

MAX_CONNECTIONS = 20_000
MAX_RATE = 2_000.0  # turns per second
MAX_SECONDS = 600.0  # per scenario phase (hold, duration, drain)
MAX_LM_STREAMS = 256
STAR_DIALOGUES = 2_000  # STAR conversations sampled for replay
FD_MARGIN = 256  # open files besides the customers' sockets (Redis, logs, the servers' own)


@dataclass(frozen=True)
class LoadOptions:
    """What a load run does; zero counts skip a scenario. Defaults are the issue's targets."""

    urls: tuple[str, ...] = ()  # ws://host:port of running deskmate servers; () = start our own
    servers: int = 1  # deskmate processes per scenario when we start them
    project: Path = Path("examples/shop")  # the bot project our servers run (trained)
    redis_url: str | None = None  # None: $DESKMATE_REDIS_URL / $REDIS_URL, else an embedded Redis
    key_prefix: str | None = None  # with urls: the servers' prefix, for the Redis check
    connections: int = 0  # customers to connect and hold
    hold: float = 20.0  # seconds they are held
    turns_per_second: float = 0.0  # open-loop rate of customer turns (language model off)
    duration: float = 30.0  # seconds turns are sent
    lm_streams: int = 0  # conversations the language model answers, all at once
    lm_turns: int = 2  # turns each of them sends, one after the other's answer
    echo: bool = True  # also drive the bare websockets echo server, as the transport's ceiling
    data: Path = Path("../shared/data")  # the shared data folder (STAR dialogues)
    drain: float = 30.0  # seconds to wait for answers after the last turn is sent
    seed: int = 0
    server_pids: tuple[int, ...] = ()  # with urls: processes whose CPU and memory to report
    profile: Path | None = None  # folder: run our deskmate servers under pyinstrument, reports here
    logs: Path | None = None  # folder to keep the started servers' logs in (default: a temporary one)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the results

    def check(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise DeskmateError(f"bench load: {what}")

        need(0 <= self.connections <= MAX_CONNECTIONS, f"--connections must be 0..{MAX_CONNECTIONS}")
        need(0 <= self.turns_per_second <= MAX_RATE, f"--turns-per-second must be 0..{MAX_RATE:g}")
        need(0 <= self.lm_streams <= MAX_LM_STREAMS, f"--lm-streams must be 0..{MAX_LM_STREAMS}")
        need(1 <= self.lm_turns <= 20, "--lm-turns must be 1..20")
        need(1 <= self.servers <= 16, "--servers must be 1..16")
        for name in ("hold", "duration", "drain"):
            value = getattr(self, name)
            need(0 < value <= MAX_SECONDS, f"--{name} must be more than 0 and at most {MAX_SECONDS:g}s")
        need(bool(self.connections or self.turns_per_second or self.lm_streams), "nothing to run")
        need(all(u.startswith(("ws://", "wss://")) for u in self.urls), "--url must be ws:// or wss://")


def chat_url(base: str) -> str:
    """``ws://host:port`` (or a full ``.../ws/chat``) -> the customer socket URL."""
    base = base.rstrip("/")
    return base if base.endswith("/ws/chat") else base + "/ws/chat"


def machine_info(redis_version: str) -> dict[str, Any]:
    """The machine, described the way ``deskmate bench lm`` does (no torch needed here)."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(),
            "websockets": importlib.metadata.version("websockets"), "redis_server": redis_version,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


class _Run:
    """One load run's shared state: Redis, the key prefix, the run folder, results."""

    def __init__(self, opts: LoadOptions, redis_url: str, prefix: str, own_prefix: bool,
                 folder: Path) -> None:
        self.opts = opts
        self.redis_url = redis_url
        self.prefix = prefix
        self.own_prefix = own_prefix
        self.folder = folder
        self.redis: Any = aioredis.from_url(redis_url, decode_responses=True)
        self.rng = random.Random(opts.seed)
        self.sids: list[str] = []

    @contextlib.asynccontextmanager
    async def deskmate(self, scenario: str, lm_backend: str) -> AsyncIterator[tuple[list[str], list[int]]]:
        """Customer URLs and server pids for one scenario: the given servers, or fresh ones."""
        if self.opts.urls:
            yield [chat_url(u) for u in self.opts.urls], list(self.opts.server_pids)
            return
        children: list[Child] = []
        try:
            for i in range(self.opts.servers):
                profile = (self.opts.profile / f"{scenario}-{i}.txt") if self.opts.profile else None
                child = deskmate_server(f"deskmate {scenario} #{i}", project=self.opts.project,
                                        redis_url=self.redis_url, prefix=self.prefix,
                                        lm_backend=lm_backend, log=self.folder / f"{scenario}-{i}.log",
                                        profile=profile)
                children.append(child)
            # One at a time: loading models on two cores in parallel only slows both.
            for child in children:
                await child.start()
            yield [f"ws://127.0.0.1:{c.port}/ws/chat" for c in children], [c.pid for c in children]
        finally:
            await asyncio.gather(*(c.stop() for c in children))

    @contextlib.asynccontextmanager
    async def echo(self) -> AsyncIterator[tuple[list[str], list[int]]]:
        child = echo_server(self.folder / "echo.log")
        try:
            await child.start(timeout=60)
            yield [f"ws://127.0.0.1:{child.port}/ws/chat"], [child.pid]
        finally:
            await child.stop()

    async def measure(self, target: Callable[[], contextlib.AbstractAsyncContextManager[
                          tuple[list[str], list[int]]]],
                      scenario: Callable[[list[str]], Awaitable[tuple[dict[str, Any], list[Customer]]]],
                      *, check: bool) -> dict[str, Any]:
        """Run ``scenario`` against ``target``'s servers with CPU/RSS watched, then (``check``)
        the Redis check, then close every customer."""
        async with target() as (urls, pids):
            customers: list[Customer] = []
            # Start from a quiet machine: the previous scenario's servers and customers are
            # gone, and the new servers have finished starting; what this process keeps
            # from earlier scenarios is frozen out of its collector.
            heap.settle()
            await quiet_machine()
            try:
                async with Usage(pids, self.redis if check else None) as usage:
                    result, customers = await scenario(urls)
                result["usage"] = usage.result
                result["servers"] = len(urls)
                if check:
                    self.sids += [c.session_id for c in customers if c.session_id]
                    result["audit"] = await audit(self.redis_url, self.prefix, customers)
            finally:
                await asyncio.gather(*(c.close() for c in customers))
        return result

    async def cleanup(self) -> None:
        """Delete what the run stored: every key under our own prefix, or, on servers run by
        someone else, the keys of the conversations this run opened."""
        try:
            if self.own_prefix:
                batch: list[str] = []
                async for key in self.redis.scan_iter(match=f"{self.prefix}*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await self.redis.unlink(*batch)
                        batch = []
                if batch:
                    await self.redis.unlink(*batch)
            else:
                from bot.keys import Keys

                keys = Keys(self.prefix)
                for start in range(0, len(self.sids), 500):
                    chunk = self.sids[start:start + 500]
                    await self.redis.unlink(*[k for s in chunk for k in (
                        keys.session(s), keys.events(s), keys.client_ids(s), keys.lock(s))])
                    await self.redis.zrem(keys.live(), *chunk)
        finally:
            await self.redis.aclose()


async def run_scenarios(opts: LoadOptions, redis_url: str, folder: Path) -> dict[str, Any]:
    """The async core of :func:`run_load` (for callers already in an event loop): servers'
    logs go to ``folder``; ``redis_url`` is the Redis the servers use."""
    opts.check()
    own = not opts.urls
    prefix = (f"dmload:{uuid.uuid4().hex[:10]}:" if own
              else opts.key_prefix or os.environ.get("DESKMATE_KEY_PREFIX") or "dm:")
    run = _Run(opts, redis_url, prefix, own, folder)
    results: dict[str, Any] = {"options": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in asdict(opts).items()}}
    try:
        info = await run.redis.info("server")
        results["machine"] = machine_info(str(info.get("redis_version", "?")))
        results["redis"] = "embedded (Unix socket)" if redis_url.startswith("unix://") else "TCP"
        needs_scripts = opts.connections or opts.turns_per_second
        scripts = None
        if needs_scripts:
            demo = demo_scripts(opts.project)
            star = star_scripts(opts.data, STAR_DIALOGUES, run.rng) if opts.data.is_dir() else []
            results["scripts"] = {"demo": len(demo), "star": len(star)}
            scripts = ScriptMix(demo, star, run.rng)
        if opts.connections:
            assert scripts is not None

            def hold(urls: list[str]) -> Awaitable[tuple[dict[str, Any], list[Customer]]]:
                return hold_connections(urls, opts.connections, opts.hold, scripts, drain=opts.drain,
                                        rng=run.rng, progress=opts.progress)

            results["connections"] = {"deskmate": await run.measure(
                lambda: run.deskmate("connections", "none"), hold, check=True)}
            if opts.echo:
                results["connections"]["echo"] = await run.measure(run.echo, hold, check=False)
        if opts.turns_per_second:
            assert scripts is not None

            def turns(urls: list[str]) -> Awaitable[tuple[dict[str, Any], list[Customer]]]:
                return turn_rate(urls, opts.turns_per_second, opts.duration, scripts, drain=opts.drain,
                                 progress=opts.progress)

            results["turns"] = {"deskmate": await run.measure(
                lambda: run.deskmate("turns", "none"), turns, check=True)}
            if opts.echo:
                results["turns"]["echo"] = await run.measure(run.echo, turns, check=False)
        if opts.lm_streams:
            texts = generative_texts(opts.project)
            backend = os.environ.get("DESKMATE_LM_BACKEND", "") or ""

            def lm(urls: list[str]) -> Awaitable[tuple[dict[str, Any], list[Customer]]]:
                return lm_streams(urls, opts.lm_streams, opts.lm_turns, texts, rng=run.rng,
                                  progress=opts.progress)

            results["lm"] = {"deskmate": await run.measure(
                lambda: run.deskmate("lm", backend if backend != "none" else ""), lm, check=True)}
    finally:
        await run.cleanup()
    return results


PROC_STAT = "/proc/stat"


async def quiet_machine(idle: float = 0.7, longest: float = 20.0) -> int:
    """Wait until the machine's CPUs are at least ``idle`` idle over one second (read from
    /proc/stat), for at most ``longest`` seconds; returns the one-second samples taken.
    Where /proc/stat cannot be read, waits a fixed two seconds (and returns 0)."""
    start = time.monotonic()

    def sample() -> tuple[int, int]:
        with open(PROC_STAT) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle+iowait

    try:
        sample()
    except (OSError, ValueError, IndexError):
        await asyncio.sleep(2.0)
        return 0
    samples = 0
    while time.monotonic() - start < longest:
        total0, idle0 = sample()
        await asyncio.sleep(1.0)
        total1, idle1 = sample()
        samples += 1
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle:
            break
    return samples


def run_load(opts: LoadOptions) -> dict[str, Any]:
    """Run the scenarios ``opts`` asks for and return every figure (see bot.loadgen_report)."""
    opts.check()
    need = max(opts.connections, opts.turns_per_second * 2 * POOL_SECONDS, opts.lm_streams) + FD_MARGIN
    limit = raise_open_files(int(need))
    if limit < need:
        raise DeskmateError(f"bench load: the open-file limit is {limit}, and this run needs about "
                            f"{int(need)}; raise it (ulimit -n) or lower --connections")
    redis_url = opts.redis_url or os.environ.get("DESKMATE_REDIS_URL") or os.environ.get("REDIS_URL")
    if opts.urls and not redis_url:
        raise DeskmateError("bench load: with --url, give --redis-url (the servers' Redis) for the check")
    keep = opts.logs is not None
    if opts.logs is not None:
        opts.logs.mkdir(parents=True, exist_ok=True)
    folder = opts.logs or Path(tempfile.mkdtemp(prefix="deskmate-load-"))
    if opts.profile is not None:
        if importlib.util.find_spec("pyinstrument") is None:
            raise DeskmateError("bench load: --profile needs pyinstrument (pip install pyinstrument)")
        opts.profile.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        # The harness's own collector pauses would count against the server.
        with heap.settled():
            if redis_url:
                results = asyncio.run(run_scenarios(opts, redis_url, folder))
            else:
                with EmbeddedRedis(folder, appendfsync="everysec") as embedded:
                    results = asyncio.run(run_scenarios(opts, embedded.url, folder))
        results["open_files"] = limit
        ok = True
        return results
    finally:
        crashed = [p.name for p in folder.glob("*.log") if "Traceback" in p.read_text(errors="replace")]
        if ok and not crashed and not keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif not keep or crashed:
            print(f"bench load: server logs kept in {folder}"
                  + (f" (tracebacks in {', '.join(crashed)})" if crashed else ""))
