"""The server with the trained classifier: every customer turn is read by the model,
and its intent and sentiment land in the stored `turn` event and the session record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis

from bot.config import Settings
from bot.keys import Keys
from bot.server import load_brain
from tests.conftest import Servers


async def test_turns_are_classified_by_the_trained_model(
        servers: Servers, trained_tinybot: Path, sync_redis: redis.Redis, key_prefix: str) -> None:
    brain = await asyncio.to_thread(load_brain, Settings(project=trained_tinybot))
    assert brain.understand is not None
    server = await servers.start(brain=brain, project=trained_tinybot)
    client = await server.client()
    await client.start()
    _, frames = await client.say("hello there")
    assert frames[-1]["text"] == "Hello! How can I help you today?"
    _, frames = await client.say("this is terrible, I hate waiting for my parcel")
    keys = Keys(key_prefix)
    turns = [json.loads(e[1]["data"]) for e in sync_redis.xrange(keys.events(client.session_id or ""))
             if e[1]["kind"] == "turn"]
    assert [t["intent"] for t in turns] == ["greet", "track_order"]
    assert all(t["reason"].startswith("classifier") for t in turns)
    assert turns[1]["sentiment"] == "negative" and turns[1]["sentiment_score"] < 0
    record = sync_redis.hgetall(keys.session(client.session_id or ""))
    assert record["last_intent"] == "track_order" and record["sentiment"] == "negative"
