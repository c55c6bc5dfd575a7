"""After a load run: check in Redis that nothing acknowledged was lost or doubled.

For every conversation the customers opened, read its event stream and session
record, and compare with what the customers saw:

* every acknowledged ``client_id`` is stored as exactly one customer message,
  under the ``event_id`` its ``ack`` named (lost / duplicated / mismatched);
* every stored customer message is answered by exactly one turn — one ``turn``
  record and its bot replies, written in one atomic append — or, if the bot was
  not in charge (the conversation went to a person), passed by the turn cursor
  without an answer (silent); one still ahead of the cursor is unanswered;
* every bot message belongs to a customer message, and no reply is stored twice
  (the same ``stream_id`` twice, or the same text twice for one turn).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from bot.keys import Keys
from bot.loadgen_customer import Customer
from bot.store import parse_event_id

BATCH = 200  # conversations read per pipeline round trip


async def audit(redis_url: str, prefix: str, customers: Sequence[Customer]) -> dict[str, Any]:
    keys = Keys(prefix)
    client: Any = aioredis.from_url(redis_url, decode_responses=True)
    out: Counter[str] = Counter()
    policies: Counter[str] = Counter()
    replies_per_turn: Counter[int] = Counter()
    examples: list[str] = []
    sessions = [c for c in customers if c.session_id]
    try:
        for start in range(0, len(sessions), BATCH):
            chunk = sessions[start:start + BATCH]
            async with client.pipeline(transaction=False) as pipe:
                for c in chunk:
                    assert c.session_id is not None
                    pipe.xrange(keys.events(c.session_id))
                    pipe.hget(keys.session(c.session_id), "cursor")
                rows = await pipe.execute()
            for i, c in enumerate(chunk):
                check = _check(c, rows[2 * i], rows[2 * i + 1], policies, replies_per_turn)
                out.update(check)
                if (check["lost"] or check["duplicated"] or check["double_answered"]
                        or check["duplicate_replies"] or check["ack_mismatch"]) and len(examples) < 5:
                    examples.append(f"session {c.session_id}: {dict(+check)}")
    finally:
        await client.aclose()
    return {"sessions": len(sessions), **{k: out[k] for k in COUNTS},
            "replies_per_turn": {str(k): v for k, v in sorted(replies_per_turn.items())},
            "policies": dict(policies.most_common()), "examples": examples}


COUNTS = ("acked", "stored_user", "lost", "duplicated", "ack_mismatch", "unacked_stored",
          "answered", "double_answered", "error_replies", "silent", "unanswered", "bot_messages",
          "orphan_replies",
          "duplicate_replies")


def _check(customer: Customer, rows: list[tuple[str, dict[str, str]]], cursor: str | None,
           policies: Counter[str], replies_per_turn: Counter[int]) -> Counter[str]:
    c: Counter[str] = Counter()
    by_cid: dict[str, list[str]] = {}
    user_ids: list[str] = []
    turns: Counter[str] = Counter()
    replies: dict[str, list[dict[str, Any]]] = {}
    for event_id, values in rows:
        data = json.loads(values["data"])
        if values["kind"] == "message" and data.get("role") == "user":
            by_cid.setdefault(str(data.get("client_id")), []).append(event_id)
            user_ids.append(event_id)
        elif values["kind"] == "message" and data.get("role") == "bot":
            replies.setdefault(str(data.get("reply_to")), []).append(data)
            c["bot_messages"] += 1
        elif values["kind"] == "turn":
            turns[str(data.get("reply_to"))] += 1
            policy = str(data.get("policy"))
            if policy.endswith("+fallback"):
                # The reason's last part says why the model's text was not used (timeout, error,
                # unsupported facts); keep it short enough to count.
                why = str(data.get("reason", "")).rsplit("; ", 1)[-1]
                policy += f" ({why[:60]})"
            policies[policy] += 1
    c["stored_user"] = len(user_ids)
    sent = {t.client_id: t for t in customer.turns}
    for client_id, turn in sent.items():
        stored = by_cid.get(client_id, [])
        if turn.ack is not None:
            c["acked"] += 1
            if not stored:
                c["lost"] += 1
            elif stored[0] != turn.event_id:
                c["ack_mismatch"] += 1
        elif stored:
            c["unacked_stored"] += 1  # the ack was still on its way when the run stopped
        if len(stored) > 1:
            c["duplicated"] += 1
    position = parse_event_id(cursor) if cursor else (0, 0)
    for event_id in user_ids:
        n = turns.get(event_id, 0)
        if n == 1:
            c["answered"] += 1
            mine = replies.get(event_id, [])
            replies_per_turn[len(mine)] += 1
            streams = [r.get("stream_id") for r in mine if r.get("stream_id")]
            texts = [(r.get("name"), r.get("text")) for r in mine]
            if len(set(streams)) < len(streams) or len(set(texts)) < len(texts):
                c["duplicate_replies"] += 1
        elif n > 1:
            c["double_answered"] += 1
        elif event_id in replies:
            c["error_replies"] += 1  # the pipeline failed and the apology was stored instead
        elif parse_event_id(event_id) <= position:
            c["silent"] += 1
        else:
            c["unanswered"] += 1
    c["orphan_replies"] = sum(len(v) for k, v in replies.items() if k not in turns and k not in user_ids)
    return c
