"""Reads conversations out of Redis for ``deskmate report`` and builds the report's numbers.

Built to run against a busy production Redis without blocking it:

* the conversations come from the live index (``dm:live``, session id scored by last
  activity) read with ZSCAN, never KEYS; those idle since before ``since`` are skipped
  without touching their keys;
* each conversation's stream is read with XRANGE from the first id at or after
  ``since`` (stream ids are millisecond timestamps), in pages of ``ENTRIES``;
* ``SESSIONS`` conversations are read per round trip (statuses and first stream
  pages in one pipeline), and each is folded into the counters
  (``dialogue.insights.Insights``) as soon as it is read, so memory stays flat.

The unanswered questions are then embedded and clustered on a worker thread
(``model.insights``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

from redis.exceptions import RedisError

from bot.errors import StoreError
from bot.store import Event, Store
from dialogue.insights import ConversationLog, Insights
from model.insights import DISTANCE, Embed, top_unanswered

SESSIONS = 100  # conversations read per round trip (one pipeline)
ENTRIES = 200  # stream entries per XRANGE: a page of a few hundred KB at most


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def active_sessions(store: Store, *, since: float | None,
                          page: int = SESSIONS) -> AsyncIterator[list[str]]:
    """Pages of the ids of sessions active at or after ``since`` (all when None)."""
    seen: set[str] = set()  # ZSCAN may return an entry twice while the set is rehashed
    batch: list[str] = []
    try:
        async for sid, score in store.redis.zscan_iter(store.keys.live(), count=page):
            if (since is not None and float(score) < since) or sid in seen:
                continue
            seen.add(sid)
            batch.append(sid)
            if len(batch) >= page:
                yield batch
                batch = []
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not read the live-session index: {exc}") from exc
    if batch:
        yield batch


def _first_id(since: float | None) -> str:
    # Stream ids are "<ms>-<seq>" of the time of the write: the window starts at this id.
    # Not below 0: Redis refuses a negative id, and nothing was written before 1970.
    return f"{max(0, int(since * 1000))}-0" if since is not None else "-"


def _decode(rows: Sequence[tuple[str, dict[str, str]]]) -> list[Event]:
    out = []
    for event_id, values in rows:
        try:
            out.append(Event(event_id, values["kind"], float(values["ts"]), json.loads(values["data"])))
        except (KeyError, ValueError):
            continue  # not an event this version wrote; the report skips it
    return out


async def window_events(store: Store, sid: str, *, since: float | None, after: str | None = None,
                        entries: int = ENTRIES) -> list[Event]:
    """The events of ``sid`` stored at or after ``since`` (or after the id ``after``),
    oldest first, read ``entries`` at a time."""
    start = f"({after}" if after else _first_id(since)
    out: list[Event] = []
    try:
        while True:
            rows = await store.redis.xrange(store.keys.events(sid), min=start, max="+", count=entries)
            out += _decode(rows)
            if len(rows) < entries:
                return out
            start = f"({rows[-1][0]}"
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not read events of {sid}: {exc}") from exc


async def conversations(store: Store, *, since: float | None, sessions: int = SESSIONS,
                        entries: int = ENTRIES) -> AsyncIterator[ConversationLog]:
    """Every conversation active at or after ``since``, with that window's events.

    One round trip per ``sessions`` conversations: their statuses and the first
    ``entries`` events of each stream in one pipeline; a longer stream's rest is
    read after, page by page."""
    start = _first_id(since)
    async for sids in active_sessions(store, since=since, page=sessions):
        try:
            async with store.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.hmget(store.keys.session(sid), ["status", "created_at"])
                    pipe.xrange(store.keys.events(sid), min=start, max="+", count=entries)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read sessions: {exc}") from exc
        for i, sid in enumerate(sids):
            (status, created), rows = replies[2 * i], replies[2 * i + 1]
            if created is None:
                continue  # expired; its id lingers in the index until the next sweep
            events = _decode(rows)
            if len(rows) == entries:
                events += await window_events(store, sid, since=since, after=rows[-1][0], entries=entries)
            yield ConversationLog(sid, status or "bot", events)


async def build_report(store: Store, *, since: float | None, intent_threshold: float,
                       until: float | None = None, clusters: int = 10, distance: float = DISTANCE,
                       embed: Embed | None = None) -> dict[str, Any]:
    """The whole report as JSON-ready data: ``Insights.summary`` plus the ``clusters`` largest
    clusters of unanswered questions. ``embed`` (texts -> unit vectors) defaults to the
    shared encoder."""
    until = time.time() if until is None else until
    insights = Insights(intent_threshold=intent_threshold, since=since, until=until)
    sessions = 0
    async for conversation in conversations(store, since=since):
        sessions += 1
        insights.add(conversation)
    questions = insights.questions()
    # torch: on a worker thread, so that a caller's event loop keeps running
    clustering = await asyncio.to_thread(top_unanswered, questions, embed=embed, distance=distance)
    summary = insights.summary()
    return {
        "generated_at": _iso(time.time()),
        "since": _iso(since),
        "until": _iso(until),
        "timezone": "UTC",
        "prefix": store.keys.prefix,
        "sessions_read": sessions,
        **summary,
        "unanswered": {
            "turns": summary["totals"]["unanswered_turns"],
            "distinct_questions": len(questions),
            "intent_threshold": intent_threshold,
            "cluster_distance": distance,
            "clustered": clustering.clustered,
            "left_out": clustering.left_out,
            "clusters": [asdict(c) for c in clustering.clusters[:clusters]],
            "more_clusters": max(len(clustering.clusters) - clusters, 0),
        },
    }
