"""The demo shop's order book: orders in Redis, seeded from ``orders.json``.

Each order is one JSON string at ``{prefix}order:{id}``. The first use of an
:class:`OrderBook` seeds every order of ``orders.json`` with ``SET NX``, so seeding
is idempotent and never overwrites an order a customer has since cancelled or
returned. Changes (cancel, start a return) read, check and write one order inside
WATCH/MULTI, so two chats cancelling the same order cannot both succeed.

Configuration comes from the environment, read when a book is opened:

- ``DESKMATE_ACTIONS_REDIS_URL``, else ``REDIS_URL``: a ``redis://``, ``rediss://``
  or ``unix://`` URL (required);
- ``DESKMATE_ACTIONS_PREFIX``: the key prefix (default ``dm:shop:``);
- ``DESKMATE_ACTIONS_TODAY``: the day return windows are judged against, an ISO
  date or ``today`` for the real clock (default :data:`DEMO_TODAY`).

This module does no rasa-sdk work; the actions in ``order_actions.py`` use it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

Order = dict[str, Any]

ORDERS_FILE = Path(__file__).resolve().parent.parent / "orders.json"
DEFAULT_PREFIX = "dm:shop:"
# The demo orders are a snapshot of the shop on 18 February 2026: the last two orders
# were placed that afternoon and two parcels are due between 18 and 23 February.
# Return windows are judged against that day, so the demo answers the same whenever
# it runs: NW-10238 and NW-10240 can be returned, NW-10231 (delivered 14 January) is
# past its 30 days. Timestamps of changes (cancelled_at, ...) use the real clock,
# since they record when the change happened.
DEMO_TODAY = date(2026, 2, 18)
RETURN_DAYS = 30  # knowledge/faq.yml, returns-policy: "within 30 days of delivery"
# Cancelling is free until the order ships (knowledge/faq.yml, order-cancel); these are
# the statuses of orders.json before shipping.
CANCELLABLE = frozenset({"placed", "paid"})
CANCELLATION_REASON = "customer request before shipping"  # as in the demo data

# "NW-10234", "nw 10234", "NW10234", "#10234", "10234"
_ORDER_ID = re.compile(r"#?\s*(?:nw)?\s*[-–—_.#]?\s*(\d{3,10})", re.IGNORECASE)


def normalize_order_id(text: object) -> str | None:
    """The canonical ``NW-12345`` form of what a customer typed, or None if it is no order id."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    match = _ORDER_ID.fullmatch(text.strip())
    return f"NW-{match.group(1)}" if match else None


def day_of(timestamp: object) -> date | None:
    """The calendar day of an ISO timestamp or date in orders.json (in its own offset)."""
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).date()
    except ValueError:
        return None


def cancel_refusal(order: Order) -> str | None:
    """Why ``order`` cannot be cancelled (its status), or None when it can."""
    status = str(order.get("status"))
    return None if status in CANCELLABLE else status


def return_refusal(order: Order, today: date) -> str | None:
    """Why a return of ``order`` cannot start today, or None when it can.

    ``"not_delivered"`` (placed, paid or on its way), ``"window_closed"`` (delivered
    more than 30 days ago), or the status that rules it out: ``"return_started"``,
    ``"returned"``, ``"cancelled"``.
    """
    status = str(order.get("status"))
    if status == "delivered":
        delivered = day_of(order.get("delivered_at"))
        if delivered is None:  # delivered without a date: nothing to count the 30 days from
            return "not_delivered"
        return "window_closed" if today > delivered + timedelta(days=RETURN_DAYS) else None
    if status in ("return_started", "returned", "cancelled"):
        return status
    return "not_delivered"


@dataclass(frozen=True)
class Change:
    """The outcome of a cancel or return request.

    ``order`` is the order after the request (None: no such order); ``refusal`` says
    why nothing changed (see :func:`cancel_refusal`, :func:`return_refusal`).
    """

    order_id: str | None
    order: Order | None
    refusal: str | None = None

    @property
    def done(self) -> bool:
        return self.order is not None and self.refusal is None


@cache
def demo_orders(path: Path = ORDERS_FILE) -> tuple[Order, ...]:
    """The seed orders, read once per process."""
    orders = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(orders, list) or not all(isinstance(o, dict) and "id" in o for o in orders):
        raise ValueError(f"{path}: expected a list of orders with an 'id' each")
    return tuple(orders)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def today_from_env(value: str | None) -> Callable[[], date]:
    """The clock for ``DESKMATE_ACTIONS_TODAY``: unset → the demo day, ``today`` → real."""
    value = (value or "").strip()
    if not value:
        return lambda: DEMO_TODAY
    if value.lower() == "today":
        return lambda: datetime.now(UTC).date()
    try:
        fixed = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"DESKMATE_ACTIONS_TODAY must be an ISO date (2026-02-18) or 'today', "
                         f"got {value!r}") from None
    return lambda: fixed


class OrderBook:
    """Orders of the demo shop in Redis: look up, cancel, start a return.

    Use as ``async with OrderBook.from_env() as book:``. A book owns its Redis
    client; the actions open one per call, so a book never outlives the event loop
    it was made on (the in-process runner and rasa-sdk's server each have their own).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX,
                 today: Callable[[], date] = lambda: DEMO_TODAY,
                 seed: Sequence[Order] | None = None) -> None:
        self.redis = client
        self.prefix = prefix
        self.today = today
        self._seed = demo_orders() if seed is None else tuple(seed)
        self._seeded = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrderBook:
        """A book configured from the environment (see the module docstring)."""
        env = os.environ if env is None else env
        url = env.get("DESKMATE_ACTIONS_REDIS_URL", "").strip() or env.get("REDIS_URL", "").strip()
        if not url:
            raise RuntimeError("the shop's actions need Redis: set DESKMATE_ACTIONS_REDIS_URL "
                               "(or REDIS_URL) to a redis:// or unix:// URL")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"DESKMATE_ACTIONS_REDIS_URL must start with redis://, rediss:// or "
                             f"unix://, got {url!r}")
        prefix = env.get("DESKMATE_ACTIONS_PREFIX", "").strip() or DEFAULT_PREFIX
        client = aioredis.Redis.from_url(url, decode_responses=True)
        return cls(client, prefix=prefix, today=today_from_env(env.get("DESKMATE_ACTIONS_TODAY")))

    async def __aenter__(self) -> OrderBook:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.redis.aclose()

    def key(self, order_id: str) -> str:
        return f"{self.prefix}order:{order_id}"

    async def seed(self) -> None:
        """Store every demo order that is not stored yet (SET NX: never overwrites)."""
        if self._seeded:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for order in self._seed:
                pipe.set(self.key(str(order["id"])), json.dumps(order, ensure_ascii=False), nx=True)
            await pipe.execute()
        self._seeded = True

    async def get(self, order_id: object) -> Order | None:
        """The order with this id (any spelling :func:`normalize_order_id` accepts), or None."""
        canonical = normalize_order_id(order_id)
        if canonical is None:
            return None
        await self.seed()
        raw = await self.redis.get(self.key(canonical))
        return _decode(raw)

    async def cancel(self, order_id: object) -> Change:
        """Cancel the order if it has not shipped yet (atomically: WATCH/MULTI)."""

        def change(order: Order) -> str | None:
            refusal = cancel_refusal(order)
            if refusal is None:
                order["status"] = "cancelled"
                order["cancelled_at"] = now_iso()
                order["cancellation_reason"] = CANCELLATION_REASON
                if order.get("paid_at"):  # nothing to refund for an order that was never paid
                    order["refund"] = {"amount": order.get("total"), "status": "pending",
                                       "method": order.get("payment_method")}
            return refusal

        return await self._update(order_id, change)

    async def start_return(self, order_id: object, reason: str | None) -> Change:
        """Start a return of a delivered order within its 30 days (atomically: WATCH/MULTI)."""
        today = self.today()

        def change(order: Order) -> str | None:
            refusal = return_refusal(order, today)
            if refusal is None:
                order["status"] = "return_started"
                order["return_started_at"] = now_iso()
                order["return_reason"] = (reason or "").strip() or None
            return refusal

        return await self._update(order_id, change)

    async def _update(self, order_id: object, change: Callable[[Order], str | None]) -> Change:
        """Read an order, let ``change`` edit it in place or refuse, write it back.

        WATCH makes the write fail if another client changed the order between our
        read and our EXEC; we then read it again and re-decide on the fresh order.
        """
        canonical = normalize_order_id(order_id)
        if canonical is None:
            return Change(None, None)
        await self.seed()
        key = self.key(canonical)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    order = _decode(await pipe.get(key))
                    if order is None:
                        return Change(canonical, None)
                    refusal = change(order)
                    if refusal is not None:
                        await pipe.unwatch()
                        return Change(canonical, order, refusal)
                    pipe.multi()
                    pipe.set(key, json.dumps(order, ensure_ascii=False))
                    await pipe.execute()
                    return Change(canonical, order)
                except WatchError:
                    continue


def _decode(raw: str | bytes | None) -> Order | None:
    if raw is None:
        return None
    order = json.loads(raw)
    return order if isinstance(order, dict) else None
