"""One viewer of one conversation: stored events replayed, then live frames, each once.

A customer's socket (:mod:`bot.chat`) and an agent's watch (:mod:`bot.agent_socket`)
both subscribe to a conversation's channel *before* reading its stored events, so
nothing published in between is missed. :class:`CatchUp` turns that into one ordered
feed:

* live frames are held while stored events are being replayed (a newer live event would
  move ``last_id`` past the replayed ones, and they would be skipped as already sent);
* stored events are passed on in stream order and deduplicated by event id;
* a streamed reply whose stored message arrives closes the stream (``stream_end`` with
  the stored id) rather than showing the text twice, and a stream whose stored message a
  replay sent whole gets no late ``stream_start``/``stream_delta`` frames;
* a stream whose reply will not be stored ends with a live ``stream_end`` that has no
  ``event_id`` (``dropped``), passed on to a viewer that saw the stream start;
* a ``resync`` frame from :class:`bot.hub.Hub` (the live subscription was lost and
  renewed) replays what was missed, holding live frames again meanwhile.

Subclasses say who sees what: :attr:`kinds` (the stored kinds this viewer gets),
:meth:`send`, :meth:`room` (backpressure), :meth:`spawn`, and how a stored frame or a
stream's end looks to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Coroutine, Sequence
from typing import Any

from bot.errors import StoreError
from bot.store import Event, parse_event_id


class CatchUp:
    """The replay-then-live state of one conversation for one viewer."""

    #: Stored event kinds this viewer is shown; None: every kind.
    kinds: Collection[str] | None = None

    def __init__(self) -> None:
        self.sid: str | None = None
        self.last_id: tuple[int, int] = (0, 0)  # newest stored event this viewer has
        self.streams: set[str] = set()  # streams this viewer saw start
        # Live frames held while stored ones are replayed; None once they flow.
        self.held: list[dict[str, Any]] | None = None
        # Streams whose stored message a replay sent whole: their frames held meanwhile are
        # stale (the viewer would show the answer twice, one copy never finished).
        self.replayed_streams: set[str] = set()

    # -- what a subclass provides ---------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    def room(self) -> bool:
        """Whether the viewer can take another frame (False: it is too slow, being dropped)."""
        raise NotImplementedError

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, owned by the viewer's connection."""
        raise NotImplementedError

    async def stored(self, after: str | None) -> Sequence[Event]:
        """This conversation's stored events after ``after``, of :attr:`kinds`."""
        raise NotImplementedError

    def deliver(self, frame: dict[str, Any]) -> None:
        """Show one new stored event (a message whose stream this viewer did not see)."""
        self.send(frame)

    def end_stream(self, frame: dict[str, Any]) -> None:
        """The stored message of a stream this viewer saw start: close that stream."""
        self.send({**frame, "type": "stream_end"})

    def on_delta(self, frame: dict[str, Any]) -> None:
        """Text of a stream this viewer saw start."""
        self.send(frame)

    # -- the feed -----------------------------------------------------------------------

    def hold(self) -> None:
        """Hold live frames from now on (a replay is starting)."""
        self.held = []

    def replay(self, after: str | None, events: Sequence[Event]) -> None:
        """Pass on stored ``events`` read after ``after``, then the live frames held meanwhile."""
        if after:
            self.last_id = parse_event_id(after)
        try:
            assert self.sid is not None
            for event in events:
                self.forward(event.frame(self.sid))
        finally:
            self.release()

    def on_live(self, frame: dict[str, Any]) -> None:
        """A frame from the conversation's channel."""
        if self.held is not None:
            self.held.append(frame)
        elif self.room():
            self.forward(frame)

    def release(self) -> None:
        """End of a replay: pass on what arrived meanwhile (duplicates are dropped)."""
        held, self.held = self.held, None
        for frame in held or []:
            self.on_live(frame)  # held again if one of them starts a resync
        self.replayed_streams.clear()

    async def resync(self) -> None:
        """Send stored events missed while the live subscription was down; live frames are
        held meanwhile (``forward`` started holding them)."""
        try:
            if self.sid is None:
                return
            after = f"{self.last_id[0]}-{self.last_id[1]}" if self.last_id != (0, 0) else None
            with contextlib.suppress(StoreError):
                for event in await self.stored(after):
                    self.forward(event.frame(self.sid))
        finally:
            self.release()

    def forward(self, frame: dict[str, Any]) -> None:
        """Pass on one live or replayed frame if this viewer should see it."""
        kind = frame.get("type")
        if kind == "resync":
            self.hold()
            self.spawn(self.resync())
        elif isinstance(frame.get("event_id"), str):  # a stored event
            if self.kinds is not None and kind not in self.kinds:
                return
            position = parse_event_id(frame["event_id"])
            if position <= self.last_id:
                return  # already sent
            self.last_id = position
            stream_id = frame.get("stream_id")
            if kind == "message" and stream_id in self.streams:
                # The viewer has the text already; close its stream with the stored id.
                self.streams.discard(stream_id)
                self.end_stream(frame)
                return
            if kind == "message" and stream_id and self.held is not None:
                self.replayed_streams.add(stream_id)
            self.deliver(frame)
        elif kind == "stream_start":
            if frame.get("stream_id") in self.replayed_streams:
                return
            self.streams.add(frame["stream_id"])
            self.send(frame)
        elif kind == "stream_delta":
            if frame.get("stream_id") in self.streams:
                self.on_delta(frame)
        elif kind == "stream_end":
            # A reply that will not be stored (an agent took over mid-stream, or its turn
            # went to another holder): its stream closes where it stopped (docs/protocol.md).
            if frame.get("stream_id") in self.streams:
                self.streams.discard(frame["stream_id"])
                self.send(frame)
        elif kind == "typing":
            self.send(frame)


__all__ = ["CatchUp"]
