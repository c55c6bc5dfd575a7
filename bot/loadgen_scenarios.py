"""The three load scenarios of ``deskmate bench load``, each bounded in count and time.

* :func:`hold_connections` — N customers connect and stay, each pinging every
  5-10 s; one in ten also sends one turn during the hold.
* :func:`turn_rate` — customer turns sent open-loop at a fixed rate (the send
  times do not wait for answers), replayed from scripted conversations, over a
  pool of connected conversations spread across the target servers.
* :func:`lm_streams` — N conversations whose turns the language model answers,
  all at once, each sending its next turn when the previous answer ended.

Each returns its figures (plain JSON-able values) and the customers, whose turns
the Redis check (:mod:`bot.loadgen_audit`) then verifies.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from bot.loadgen_customer import Customer, Tally, Turn, fake_address
from bot.loadgen_texts import Say, Script, ScriptMix

OPEN_CONCURRENCY = 100  # handshakes in flight at once while opening customers
PING_EVERY = (5.0, 10.0)  # seconds between one held customer's pings
HOLD_TURN_EVERY = 10  # one held customer in this many also sends a turn
POOL_SECONDS = 3.0  # turn-rate pool: each conversation gets a turn about this often
STALL = 5.0  # a drain ends early when no turn settled for this long
LM_TURN_TIMEOUT = 180.0  # seconds one language-model turn may take before it counts as unanswered


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles of seconds, in milliseconds (None when there are no values)."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        out[f"p{q}"] = (ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000
                        if ordered else None)
    return out


def turn_latencies(turns: Sequence[Turn]) -> dict[str, dict[str, float | None]]:
    """ack / first reply frame / first delta / end of the answer, from when each turn was due."""
    def of(pick: Callable[[Turn], float | None]) -> dict[str, float | None]:
        values = [v - t.sent for t in turns if (v := pick(t)) is not None]
        return {"n": float(len(values)), **percentiles(values)}

    return {"ack": of(lambda t: t.ack), "first_reply": of(lambda t: t.first_reply),
            "first_delta": of(lambda t: t.first_delta), "end": of(lambda t: t.stream_end)}


def turn_counts(turns: Sequence[Turn]) -> dict[str, int]:
    return {"sent": len(turns), "acked": sum(t.ack is not None for t in turns),
            "answered": sum(t.done is not None for t in turns),
            "refused": sum(t.error is not None and t.ack is None for t in turns),
            "unsettled": sum(not t.settled for t in turns)}


def _bar(progress: bool, **kwargs: Any) -> tqdm:
    return tqdm(disable=not progress, dynamic_ncols=True, **kwargs)


async def open_customers(urls: Sequence[str], n: int, tally: Tally, *, progress: bool,
                         desc: str = "connect") -> tuple[list[Customer], list[float]]:
    """``n`` customers spread round-robin over ``urls`` (no stickiness), opened with at most
    OPEN_CONCURRENCY handshakes in flight; returns them and the open times of those that made it."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    times: list[float] = []
    with _bar(progress, total=n, desc=desc, unit="conn") as bar:
        async def one(i: int) -> Customer:
            async with gate:
                customer = Customer(urls[i % len(urls)], tally, fake_address(i))
                t0 = time.perf_counter()
                if await customer.open():
                    times.append(time.perf_counter() - t0)
                bar.update(1)
                return customer

        customers = await asyncio.gather(*(one(i) for i in range(n)))
    return list(customers), times


async def until(done: Callable[[], bool], timeout: float, *, progress: Callable[[], int] | None = None,
                step: float = 0.05) -> None:
    """Wait for ``done()``; give up after ``timeout``, or after STALL seconds in which
    ``progress()`` (a count that grows while work finishes) did not move."""
    deadline = time.monotonic() + timeout
    last, moved = progress() if progress else 0, time.monotonic()
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(step)
        if progress is not None:
            now = progress()
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > STALL:
                return


def _settled_check(turn: Turn) -> Callable[[], bool]:
    return lambda: turn.settled


def _settled(customers: Sequence[Customer]) -> int:
    return sum(t.settled for c in customers for t in c.turns)


# -- connections held ------------------------------------------------------------


async def hold_connections(urls: Sequence[str], n: int, hold: float, scripts: ScriptMix, *,
                           drain: float, rng: random.Random, progress: bool = True,
                           ) -> tuple[dict[str, Any], list[Customer]]:
    tally = Tally()
    t_open = time.perf_counter()
    customers, open_times = await open_customers(urls, n, tally, progress=progress)
    open_wall = time.perf_counter() - t_open
    opened = [c for c in customers if c.connected]
    rtts: list[float] = []
    lost_pings = 0
    t0 = time.perf_counter()
    deadline = t0 + hold

    async def keep(customer: Customer, i: int) -> None:
        nonlocal lost_pings
        turn_at = t0 + rng.uniform(0, hold * 0.7) if i % HOLD_TURN_EVERY == 0 else math.inf
        say = scripts.next().turns[0]
        next_ping = t0 + rng.uniform(0, PING_EVERY[1])
        while not customer.closed:
            due = min(next_ping, turn_at)
            if due >= deadline:
                return
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if customer.closed:
                return
            if due == turn_at:
                turn_at = math.inf
                await customer.say(say.text, say.payload, due=due)
                continue
            rtt = await customer.ping()
            if rtt is None:
                lost_pings += 1
            else:
                rtts.append(rtt)
            next_ping = time.perf_counter() + rng.uniform(*PING_EVERY)

    keepers = [asyncio.create_task(keep(c, i)) for i, c in enumerate(opened)]
    with _bar(progress, total=round(hold), desc="hold", unit="s") as bar:
        while time.perf_counter() < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
            bar.n = min(round(time.perf_counter() - t0), round(hold))
            bar.set_postfix(connected=sum(c.connected for c in opened), refresh=True)
    connected_at_end = sum(c.connected for c in opened)
    await asyncio.gather(*keepers)
    turns = [t for c in opened for t in c.turns]
    await until(lambda: all(t.settled for t in turns), drain, progress=lambda: _settled(opened))
    result = {
        "connections": n, "opened": len(opened), "connected_at_end": connected_at_end,
        "hold_s": hold, "open_wall_s": open_wall, "open_ms": percentiles(open_times),
        "pings": len(rtts) + lost_pings, "lost_pings": lost_pings, "ping_ms": percentiles(rtts),
        "turns": turn_counts(turns), "latency_ms": turn_latencies(turns),
        "connect_failures": dict(tally.connect_failures), "closes": dict(tally.closes),
        "errors": dict(tally.errors), "redelivered": tally.redelivered,
    }
    return result, customers


# -- turns at a fixed rate ---------------------------------------------------------


class _Conversation:
    """A pooled customer and where it is in its script."""

    def __init__(self, customer: Customer, script: Script) -> None:
        self.customer = customer
        self.script = script
        self.next = 0

    @property
    def usable(self) -> bool:
        return (self.customer.connected and not self.customer.handed_off
                and self.next < len(self.script.turns))

    def take(self) -> Say:
        say = self.script.turns[self.next]
        self.next += 1
        return say


async def turn_rate(urls: Sequence[str], rate: float, duration: float, scripts: ScriptMix, *,
                    drain: float, progress: bool = True) -> tuple[dict[str, Any], list[Customer]]:
    """Send ``rate`` turns per second for ``duration`` seconds, open-loop.

    Each turn goes to a pooled conversation that is waiting for nothing (else to the
    least busy one); a conversation whose script has ended, or that was handed to a
    person, is replaced by a new customer, so replacements add session starts to the load.
    """
    tally = Tally()
    size = max(4, math.ceil(rate * POOL_SECONDS))
    opened, _ = await open_customers(urls, size, tally, progress=progress, desc="connect pool")
    everyone = list(opened)
    pool = [_Conversation(c, scripts.next()) for c in opened if c.connected]
    if not pool:
        raise RuntimeError("no customer could connect; see connect_failures")
    refills: set[asyncio.Task[None]] = set()
    made = len(everyone)

    async def refill() -> None:
        nonlocal made
        customer = Customer(urls[made % len(urls)], tally, fake_address(made))
        made += 1
        everyone.append(customer)
        if await customer.open():
            pool.append(_Conversation(customer, scripts.next()))

    async def leave(customer: Customer) -> None:
        # A customer whose conversation ended goes away once its last answer is in.
        await until(lambda: customer.busy == 0, drain, step=0.5)
        await customer.close()

    total = max(1, round(rate * duration))
    late = 0.0
    cursor = 0
    t0 = time.perf_counter()
    with _bar(progress, total=total, desc=f"turns @{rate:g}/s", unit="turn") as bar:
        for k in range(total):
            due = t0 + k / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                late = max(late, -wait)
            for conv in [c for c in pool if not c.usable]:
                pool.remove(conv)
                for work in (refill(), leave(conv.customer)):
                    task = asyncio.create_task(work)
                    refills.add(task)
                    task.add_done_callback(refills.discard)
            if not pool:
                await until(lambda: bool(pool), 10.0)
                if not pool:
                    break
            # Round-robin from where the last turn went, preferring a conversation not waiting
            # for an answer; if every one is, the least busy (the send still leaves on time).
            chosen = None
            for step in range(len(pool)):
                conv = pool[(cursor + step) % len(pool)]
                if conv.customer.busy == 0:
                    chosen, cursor = conv, (cursor + step + 1) % len(pool)
                    break
            if chosen is None:
                chosen = min(pool, key=lambda c: c.customer.busy)
            say = chosen.take()
            await chosen.customer.say(say.text, say.payload, due=due)
            bar.update(1)
            if k % max(1, round(rate)) == 0:  # about once a second
                turns_now = [t for c in everyone for t in c.turns]
                bar.set_postfix(acked=sum(t.ack is not None for t in turns_now),
                                answered=sum(t.done is not None for t in turns_now), refresh=False)
    send_window = time.perf_counter() - t0
    turns = [t for c in everyone for t in c.turns]
    await until(lambda: all(t.settled for t in turns), drain, progress=lambda: _settled(everyone))
    for task in list(refills):
        task.cancel()
    await asyncio.gather(*refills, return_exceptions=True)
    ends = [t.done for t in turns if t.done is not None]
    acks = [t.ack for t in turns if t.ack is not None]
    result = {
        "rate": rate, "duration_s": duration, "send_window_s": send_window, "max_send_lag_ms": late * 1000,
        "pool": size, "conversations": len(everyone),
        "acked_per_s": len(acks) / send_window,
        "answered_per_s": len(ends) / max(max(ends, default=t0) - t0, send_window),
        "turns": turn_counts(turns), "latency_ms": turn_latencies(turns),
        "replies_per_answer": _replies(turns),
        "connect_failures": dict(tally.connect_failures), "closes": dict(tally.closes),
        "errors": dict(tally.errors), "redelivered": tally.redelivered,
    }
    return result, everyone


def _replies(turns: Sequence[Turn]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in turns:
        if t.done is not None:
            counts[str(t.replies)] = counts.get(str(t.replies), 0) + 1
    return dict(sorted(counts.items()))


# -- language-model streams ----------------------------------------------------------


async def lm_streams(urls: Sequence[str], n: int, turns_each: int, texts: Sequence[str], *,
                     rng: random.Random, progress: bool = True) -> tuple[dict[str, Any], list[Customer]]:
    tally = Tally()
    customers, _ = await open_customers(urls, n, tally, progress=progress)
    opened = [c for c in customers if c.connected]
    t0 = time.perf_counter()
    with _bar(progress, total=len(opened) * turns_each, desc="LM turns", unit="turn") as bar:
        async def converse(customer: Customer) -> None:
            for _ in range(turns_each):
                if not customer.connected or customer.handed_off:
                    return
                turn = await customer.say(rng.choice(list(texts)))
                await until(_settled_check(turn), LM_TURN_TIMEOUT)
                bar.update(1)

        await asyncio.gather(*(converse(c) for c in opened))
    wall = time.perf_counter() - t0
    turns = [t for c in opened for t in c.turns]
    result = {
        "streams": n, "opened": len(opened), "turns_each": turns_each, "wall_s": wall,
        "turns": turn_counts(turns), "latency_ms": turn_latencies(turns),
        "ttft_ms": percentiles([t.first_delta - t.sent for t in turns if t.first_delta is not None]),
        "connect_failures": dict(tally.connect_failures), "closes": dict(tally.closes),
        "errors": dict(tally.errors), "redelivered": tally.redelivered,
    }
    return result, customers
