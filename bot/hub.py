"""Live fan-out: one Redis pub/sub connection per process, many local listeners.

Every instance subscribes to the channels of the conversations its clients
watch; the reader task hands each frame to the listeners' own queues, so one
slow client never holds up the others (a listener whose queue is full is told
to drop its client, which then reconnects and replays from Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("deskmate.hub")

Listener = Callable[[dict[str, Any]], None]
RESYNC = '{"type": "resync"}'  # handed to listeners after a reconnect; never sent by Redis


class Hub:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=False)
        self._listeners: dict[str, set[Listener]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # A re-subscribe failed: the pub/sub connection holds none of the channels, even once
        # a new listener's channel is subscribed on it, until the reader subscribes them all.
        self._stale = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read(), name="hub-reader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()

    async def subscribe(self, channel: str, listener: Listener, timeout: float = 5.0) -> None:
        """Add ``listener``; returns once Redis confirms the subscription, so that a read
        of the stream made afterwards cannot miss an event published in between.
        When Redis cannot confirm it, ``listener`` is forgotten and the error raised."""
        async with self._lock:
            listeners = self._listeners.setdefault(channel, set())
            listeners.add(listener)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                # The first listener subscribes; later ones wait for the same confirmation.
                confirmed = self._confirmed[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._forget(channel, listener)
                    raise
        try:
            await asyncio.wait_for(confirmed.wait(), timeout)
        except Exception:  # not confirmed in time: leave no listener behind
            await self.unsubscribe(channel, listener)
            raise

    def _forget(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]
                self._confirmed.pop(channel, None)

    async def unsubscribe(self, channel: str, listener: Listener) -> None:
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]
                self._confirmed.pop(channel, None)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if kind == "subscribe" and channel in self._confirmed:
            confirmed = self._confirmed[channel]
            if confirmed.is_set():
                # Subscribed again: the connection was lost and renewed (by the reader, or by
                # redis-py on its own), and frames published meanwhile are gone from pub/sub.
                # Now that nothing more can be missed, listeners catch up from the stream.
                self._dispatch({"type": "message", "channel": channel, "data": RESYNC})
            confirmed.set()
            return
        if kind != "message" or channel not in self._listeners:
            return
        try:
            decoded = json.loads(message["data"])
        except (TypeError, ValueError):
            log.warning("dropping undecodable frame on %s", channel)
            return
        # A list is several frames published together (Store.publish_many), kept in order.
        for frame in decoded if isinstance(decoded, list) else (decoded,):
            if not isinstance(frame, dict):
                log.warning("dropping a frame that is not an object on %s", channel)
                continue
            for listener in list(self._listeners.get(channel, ())):
                try:
                    listener(frame)
                except Exception:  # a broken listener must not stop the fan-out
                    log.exception("listener failed on %s", channel)

    async def _read(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._stale or not self._pubsub.subscribed:
                    if self._listeners and not self._lock.locked():
                        # A previous attempt failed (Redis still down): back off, as after a lost connection.
                        if not await self._resubscribe():
                            await asyncio.sleep(backoff)
                            backoff = min(backoff * 2, 5.0)
                            continue
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
                if message is not None:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                await self._resubscribe()

    async def _resubscribe(self) -> bool:
        """A fresh pub/sub connection with every channel that still has listeners;
        False when Redis refused it (the reader tries again).

        Frames published while the connection was down are lost for live listeners: each
        channel's confirmation tells them to catch up from the stream (see ``_dispatch``).
        """
        async with self._lock:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            channels = list(self._listeners)
            if channels:
                try:
                    await self._pubsub.subscribe(*channels)
                except (RedisError, OSError) as exc:
                    log.warning("re-subscribing failed (%s); will retry", exc)
                    self._pubsub = self._client.pubsub(ignore_subscribe_messages=False)
                    self._stale = True
                    return False
                log.info("pub/sub re-subscribed to %d channels", len(channels))
            self._stale = False
        return True
