"""Processes a load run starts and watches: deskmate servers, the echo server, and
their CPU and memory (and Redis' CPU), sampled while a scenario runs.

Servers are children of the load generator: they inherit its raised open-file
limit, log to a file in the run's folder (read for the bound port, and kept on
failure), and stop with SIGTERM — deskmate's graceful shutdown — then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.errors import DeskmateError

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (?:http|ws)://([\w.\-]+):(\d+)")
START_TIMEOUT = 300.0  # seconds: a server loading the classifier and language model on 2 busy cores


def raise_open_files(need: int) -> int:
    """Raise this process's soft open-file limit as far as the hard limit allows (children
    started afterwards inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Child:
    """A server process started for the run."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = START_TIMEOUT) -> int:
        """Start it and return the port it reports listening on."""
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
                return self.port
            if self.proc.returncode is not None:
                raise DeskmateError(f"{self.name} exited at start (code {self.proc.returncode}):\n"
                                    + self.tail())
            # The log file is the only signal (the bound port is known once it is written).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.2)
        await self.stop()
        raise DeskmateError(f"{self.name} did not start within {timeout:.0f}s:\n" + self.tail())

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # deskmate finishes running turns, then exits
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def deskmate_server(name: str, *, project: Path, redis_url: str, prefix: str, lm_backend: str,
                    log: Path, profile: Path | None = None) -> Child:
    """``deskmate run`` on a free port with its own key prefix (under pyinstrument with ``profile``)."""
    env = {**os.environ, "DESKMATE_KEY_PREFIX": prefix, "DESKMATE_LM_BACKEND": lm_backend,
           "DESKMATE_ACTIONS_REDIS_URL": redis_url, "DESKMATE_ACTIONS_PREFIX": f"{prefix}shop:",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           # Every customer comes from this machine; each sends its own X-Forwarded-For, so the
           # per-address limits apply per simulated customer, as behind a proxy in production.
           "DESKMATE_TRUST_PROXY": "true"}
    env.pop("REDIS_URL", None)
    env.pop("DESKMATE_REDIS_URL", None)
    run = ["-m", "bot.cli", "run", "--host", "127.0.0.1", "--port", "0", "--project", str(project.resolve()),
           "--redis-url", redis_url, "--log-level", "INFO"]
    prefix_argv = [sys.executable]
    if profile is not None:
        prefix_argv += ["-m", "pyinstrument", "--renderer", "text", "--outfile", str(profile)]
    return Child(name, prefix_argv + run, env, log)


def echo_server(log: Path) -> Child:
    return Child("echo server", [sys.executable, "-m", "bot.echo_server", "--port", "0"],
                 {**os.environ, "PYTHONUNBUFFERED": "1"}, log)


# -- resource use -------------------------------------------------------------------


def _proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of ``pid`` and its children, via psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
            cpu = rss = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss / 2**20
            return cpu, rss
        except psutil.Error:
            return 0.0, 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat[11]) + int(stat[12])) / ticks
        rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


async def redis_cpu(client: Any) -> float | None:
    """Seconds of CPU the Redis server has used (None when INFO is not allowed)."""
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:
        return None


class Usage:
    """CPU and peak RSS of some processes over a scenario, plus this process's and Redis' CPU.

    ``async with Usage(pids, redis) as usage:`` samples RSS every half second; afterwards
    ``usage.result`` holds the figures (CPU as % of one core)."""

    def __init__(self, pids: Sequence[int], redis: Any | None) -> None:
        self.pids = list(pids)
        self.redis = redis
        self.result: dict[str, Any] = {}
        self._peak = 0.0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> tuple[float, float]:
        cpu = rss = 0.0
        for pid in self.pids:
            c, r = _proc_cpu_rss(pid)
            cpu, rss = cpu + c, rss + r
        return cpu, rss

    async def _watch(self) -> None:
        while True:
            self._peak = max(self._peak, self._sample()[1])
            await asyncio.sleep(0.5)

    async def __aenter__(self) -> Usage:
        self._cpu0, rss = self._sample()
        self._peak = rss
        self.result["rss_start_mb"] = rss
        self._self0 = time.process_time()
        self._redis0 = await redis_cpu(self.redis) if self.redis is not None else None
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        cpu, rss = self._sample()
        self._peak = max(self._peak, rss)
        redis1 = await redis_cpu(self.redis) if self.redis is not None else None
        self.result.update({
            "wall_s": wall, "rss_peak_mb": self._peak, "rss_end_mb": rss,
            "server_cpu_pct": 100 * (cpu - self._cpu0) / wall if self.pids else None,
            "loadgen_cpu_pct": 100 * (time.process_time() - self._self0) / wall,
            "load_avg_1m_end": os.getloadavg()[0],
            "redis_cpu_pct": (100 * (redis1 - self._redis0) / wall
                              if redis1 is not None and self._redis0 is not None else None),
        })
