"""The agent socket, ``/ws/agent``: one :class:`AgentConnection` per console.

Lifecycle: the first frame signs in (``auth`` with a token, or ``login`` with
name and password; anything else closes with 4401); then the console gets a
``sessions`` snapshot and every ``session_update``, and may ``watch``
conversations (their stored events replayed, then every live frame) and act
on them. Each action re-checks the token (it may have been revoked or have
expired) and runs as one guarded append, so ownership is decided by Redis,
not by what this socket saw earlier. Like ``bot.chat``, every frame goes out
through this connection's own queue: a slow console delays only itself.

Consoles also review what the bot learns from agents (``bot.learning``): ``proposals``
lists the pending ones and follows their changes; ``approve`` and ``reject`` decide.
Admins may ask for the insights ``report`` (``deskmate report``'s HTML page); any agent
for ad lines (``copy``: ``deskmate copy --json``'s report) from the server's language model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bot import agent_actions as actions
from bot import agent_frames as frames
from bot.agents import Agent, Agents, LoginRefused
from bot.catchup import CatchUp
from bot.chat import MAX_QUEUED, RateLimiter
from bot.errors import ConfigError, FrameError, StoreError
from bot.learning import ReviewError
from bot.store import Conflict, Event

if TYPE_CHECKING:
    from bot.server import App

log = logging.getLogger("deskmate.agent")

UNAUTHORIZED = 4401  # close code: not signed in, or the login expired or was revoked
UNAVAILABLE = "the service is briefly unavailable; retry"  # sign-in refused: Redis is unreachable
AUTH_TIMEOUT = 10.0  # seconds to send the first frame
RECHECK_EVERY = 30.0  # seconds between token checks on an idle console
SNAPSHOT_LIMIT = 500  # most recently active conversations in a `sessions` snapshot
MAX_WATCHES = 50
RATE_FRAMES, RATE_WINDOW = 100, 10.0  # typing indicators are chatty; still a ceiling


class _Closed(Exception):
    """This connection closed itself (signed out, token revoked); stop serving."""


class Watch(CatchUp):
    """One watched conversation on one console: :class:`CatchUp`'s feed with every kind
    passed on: turn analyses, notes, tracking and slot events are what agents watch for."""

    sid: str  # a watch is always of one conversation

    def __init__(self, conn: AgentConnection, sid: str) -> None:
        super().__init__()
        self.conn = conn
        self.sid = sid
        self.hold()  # until the first replay is sent

    def send(self, frame: dict[str, Any]) -> None:
        self.conn.send(frame)

    def room(self) -> bool:
        return self.conn.room()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.conn.spawn(work)

    async def stored(self, after: str | None) -> list[Event]:
        return await self.conn.store.events(self.sid, after)


class AgentConnection:
    def __init__(self, ws: ServerConnection, app: App) -> None:
        self.ws = ws
        self.app = app
        self.settings = app.settings
        self.store = app.store
        self.agents = Agents(app.store.redis, app.store.keys, token_ttl=app.settings.agent_token_ttl)
        self.agent: Agent | None = None
        self.token = ""
        self.watches: dict[str, Watch] = {}
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.held_updates: list[dict[str, Any]] | None = None
        self.following_proposals = False
        self.held_proposals: list[dict[str, Any]] | None = None
        # One proposals listing at a time: a `proposals` frame and a resync's listing (run in
        # the background) would share `held_proposals`, the first to end clearing the other's.
        self._listing = asyncio.Lock()
        self._reporting = False
        self._copying = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._dropping = False
        self.limiter = RateLimiter(RATE_FRAMES, RATE_WINDOW)

    async def serve(self) -> None:
        try:
            if not await self._sign_in():
                return
        except ConnectionClosed:
            return
        writer = asyncio.create_task(self._write())
        self.spawn(self._recheck())
        updates = self.store.keys.updates_channel()
        try:
            try:
                await self._subscribe_updates()
            except StoreError as exc:
                # Signed in, but with no session list to show: refused like a sign-in
                # that could not reach Redis, so the console retries.
                log.warning("agent %s: no session updates: %s", self.agent and self.agent.name, exc)
                await self._refuse("unavailable", UNAVAILABLE, 1013)
                return
            async for raw in self.ws:
                await self._on_frame(raw)
        except (ConnectionClosed, _Closed):
            pass
        finally:
            await self.app.hub.unsubscribe(updates, self._on_update)
            if self.following_proposals:
                await self.app.hub.unsubscribe(self.store.keys.knowledge_channel(), self._on_proposal)
            for watch in list(self.watches.values()):
                await self.app.hub.unsubscribe(self.store.keys.channel(watch.sid), watch.on_live)
            for task in [writer, *self._tasks]:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    # -- signing in -----------------------------------------------------------

    async def _sign_in(self) -> bool:
        """Read the first frame; True once signed in, else the socket is closed."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), AUTH_TIMEOUT)
        except TimeoutError:
            await self._refuse("unauthorized", "sign in first")
            return False
        try:
            first = frames.parse_first(raw, max_bytes=self.settings.max_frame_bytes)
            if isinstance(first, frames.Auth):
                agent = await self.agents.verify(first.token)
                expires_at = await self.agents.expires_at(first.token) if agent else None
                if agent is None or expires_at is None:
                    raise LoginRefused("unauthorized", "this login expired or was revoked")
                token = first.token
            else:
                token, expires_at, agent = await self.agents.login(first.name, first.password)
        except FrameError as exc:
            await self._refuse("unauthorized", exc.message)
            return False
        except LoginRefused as exc:
            await self._refuse(exc.code, exc.message)
            return False
        except StoreError as exc:
            log.warning("agent sign-in failed: %s", exc)
            await self._refuse("unavailable", UNAVAILABLE, 1013)
            return False
        self.agent, self.token = agent, token
        await self.ws.send(self.app.encode({
            "type": "auth_ok", "agent": agent.name, "role": agent.role, "token": token,
            "expires_at": expires_at}))
        log.info("agent %s signed in", agent.name)
        return True

    async def _refuse(self, code: str, message: str, close_code: int = UNAUTHORIZED) -> None:
        # Sent directly, not queued: the close must follow the error frame.
        self.app.metrics.errors.labels(code).inc()
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.app.encode({"type": "error", "code": code, "message": message}))
        await self.ws.close(close_code, message[:100])

    async def _current_agent(self) -> Agent:
        """The signed-in agent as Redis knows it now; closes with 4401 when the token is gone."""
        agent = await self.agents.verify(self.token)
        if agent is None:
            await self._refuse("unauthorized", "your login expired or was revoked")
            raise _Closed
        self.agent = agent  # the role may have changed
        return agent

    async def _recheck(self) -> None:
        # An idle console must stop receiving conversations once its login is revoked.
        while True:
            await asyncio.sleep(RECHECK_EVERY)
            with contextlib.suppress(StoreError, _Closed, ConnectionClosed):
                await self._current_agent()

    # -- outgoing -------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        self.out.put_nowait(frame)

    def error(self, code: str, message: str, **context: Any) -> None:
        self.app.metrics.errors.labels(code).inc()
        if not self.room():
            return  # flooding without reading: dropped rather than buffered
        self.send({"type": "error", "code": code, "message": message,
                   **{k: v for k, v in context.items() if v is not None}})

    def room(self) -> bool:
        """False once the console has fallen too far behind (it is being dropped)."""
        if self.out.qsize() <= MAX_QUEUED:
            return True
        if not self._dropping:
            log.warning("agent %s: console too slow, dropping it", self.agent and self.agent.name)
            self._dropping = True
            self.spawn(self.ws.close(1013, "too slow; reconnect"))
        return False

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, owned by this connection (cancelled with it)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.out.get()
                await self.ws.send(self.app.encode(frame))

    # -- the session list -----------------------------------------------------

    async def _snapshot(self) -> list[dict[str, Any]]:
        sids = await self.store.live_sessions(SNAPSHOT_LIMIT)
        return [actions.summary(sid, record) for sid, record in await self.store.records(sids)]

    async def _subscribe_updates(self) -> None:
        """Subscribe, then read the snapshot: no update can fall in between. Raises
        :class:`StoreError` when Redis is unreachable."""
        self.held_updates = []
        try:
            await self.app.hub.subscribe(self.store.keys.updates_channel(), self._on_update)
        except (TimeoutError, RedisError, OSError):
            self.held_updates = None
            raise StoreError("could not subscribe to session updates") from None
        try:
            sessions = await self._snapshot()
            self.send({"type": "sessions", "sessions": sessions})
        finally:
            held, self.held_updates = self.held_updates, None
        seen = {s["session_id"]: s["updated_at"] or 0.0 for s in sessions}
        for update in held:
            session = update["session"]
            if (session["updated_at"] or 0.0) > seen.get(session["session_id"], -1.0):
                self.send(update)

    async def _send_snapshot(self) -> None:
        with contextlib.suppress(StoreError):
            self.send({"type": "sessions", "sessions": await self._snapshot()})

    def _on_update(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "resync":  # pub/sub reconnected: updates may be lost
            self.spawn(self._send_snapshot())
            return
        session = frame.get("session")
        if frame.get("type") != "session_update" or not isinstance(session, dict):
            return
        sid = str(session.get("session_id", ""))
        update = {"type": "session_update", "session_id": sid,
                  "session": actions.summary(sid, session)}
        if self.held_updates is not None:
            self.held_updates.append(update)
        elif self.room():
            self.send(update)

    # -- incoming -------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        sid = action = client_id = pid = None
        allowed = self.limiter.allow()  # bad frames count too: answering them costs as much
        try:
            try:
                frame = frames.parse(raw, max_bytes=self.settings.max_frame_bytes,
                                     max_text=self.settings.max_text_chars)
            except FrameError:
                if not allowed:
                    raise FrameError("rate_limited", "too many frames; slow down") from None
                raise
            # What an error names, so the console knows which action or message failed.
            sid = getattr(frame, "session_id", None)
            action = type(frame).__name__.lower()  # the frame's `type` (each class is named after it)
            client_id = getattr(frame, "client_id", None)
            pid = getattr(frame, "proposal_id", None)
            if not allowed:
                raise FrameError("rate_limited", "too many frames; slow down")
            agent = await self._current_agent()
            await self._dispatch(agent, frame)
        except (FrameError, ReviewError) as exc:
            self.error(exc.code, exc.message, session_id=sid, action=action, client_id=client_id,
                       proposal_id=pid)
        except Conflict as exc:
            assert self.agent is not None
            code, message = actions.refusal(exc, self.agent.name)
            self.error(code, message, session_id=sid, action=action, client_id=client_id,
                       agent=exc.agent)
        except StoreError as exc:
            if "expired or unknown" in str(exc):
                self.error("unknown_session", "no such conversation (or it expired)",
                           session_id=sid, action=action, client_id=client_id)
            else:
                log.warning("agent socket: %s", exc)
                self.error("unavailable", "briefly unavailable; please retry", session_id=sid,
                           action=action, client_id=client_id, proposal_id=pid)

    async def _dispatch(self, agent: Agent, frame: frames.AgentFrame) -> None:
        if isinstance(frame, frames.Sessions):
            self.send({"type": "sessions", "sessions": await self._snapshot()})
        elif isinstance(frame, frames.Logout):
            await self.agents.logout(self.token)
            await self.ws.close(1000, "signed out")
            raise _Closed
        elif isinstance(frame, frames.Watch):
            await self._watch(frame.session_id, frame.after)
        elif isinstance(frame, frames.Unwatch):
            await self._unwatch(frame.session_id)
        elif isinstance(frame, frames.Typing):
            record = await self.store.session(frame.session_id) or {}
            if record.get("status") != "agent" or record.get("agent") != agent.name:
                raise FrameError("not_owner", "take this conversation over first")
            await self.store.publish(frame.session_id, {
                "type": "typing", "role": "agent", "on": frame.on, "agent": agent.name})
        elif isinstance(frame, frames.Send):
            write = actions.send(agent, frame.client_id, frame.text)
            appended = await self.store.append(frame.session_id, write.events, fields=write.fields,
                                               allow=write.allow, client_id=write.client_id)
            event_id = appended.event_ids[0]
            self.send({"type": "ack", "session_id": frame.session_id,
                       "client_id": frame.client_id, "event_id": event_id})
            if not appended.duplicate:
                self.app.learning.note_answer(frame.session_id, event_id)
        elif isinstance(frame, frames.Proposals):
            await self._send_proposals()
        elif isinstance(frame, frames.Approve):
            entry = await self.app.learning.approve(frame.proposal_id, frame.question, frame.answer,
                                                    agent.name)
            self.send({"type": "ok", "action": "approve", "proposal_id": frame.proposal_id,
                       "entry_id": entry.id})
        elif isinstance(frame, frames.Reject):
            await self.app.learning.reject(frame.proposal_id, agent.name)
            self.send({"type": "ok", "action": "reject", "proposal_id": frame.proposal_id})
        elif isinstance(frame, frames.Report):
            self._start_report(agent, frame.since)
        elif isinstance(frame, frames.Copy):
            self._start_copy(frame)
        else:
            await self._act(agent, frame)

    async def _act(self, agent: Agent, frame: frames.AgentFrame) -> None:
        """takeover, assign, handback, close, note: one guarded write, then ``ok``."""
        sid: str = getattr(frame, "session_id", "")
        record = await self.store.session(sid)
        if record is None:
            raise FrameError("unknown_session", "no such conversation (or it expired)")
        if isinstance(frame, frames.Takeover):
            if record.get("status") == "agent" and record.get("agent") == agent.name:
                write = None  # already ours: nothing to announce again
            else:
                write = actions.takeover(agent)
        elif isinstance(frame, frames.Assign):
            if not agent.is_admin:
                raise FrameError("forbidden", "only an admin can assign conversations")
            if await self.agents.get(frame.agent) is None:
                raise FrameError("unknown_agent", f"no agent named {frame.agent!r}")
            write = actions.assign(frame.agent)
        elif isinstance(frame, frames.Handback):
            write = actions.handback(agent, record.get("agent"))
        elif isinstance(frame, frames.Close):
            write = actions.close(agent)
        elif isinstance(frame, frames.Note):
            write = actions.note(agent, frame.text)
        else:  # pragma: no cover - every frame type is handled above
            raise FrameError("unknown_type", "unsupported frame")
        result = await self._run(sid, write) if write else []
        done: dict[str, Any] = {"type": "ok", "action": type(frame).__name__.lower(),
                                "session_id": sid}
        if result:
            done["event_id"] = result[-1]
        self.send(done)

    async def _run(self, sid: str, write: actions.Write) -> list[str]:
        appended = await self.store.append(sid, write.events, fields=write.fields,
                                           allow=write.allow, client_id=write.client_id)
        return appended.event_ids

    # -- knowledge review and insights ------------------------------------------

    async def _send_proposals(self) -> None:
        """The pending proposals; the first time, follow their changes too. Subscribed
        before the list is read, and changes that arrive meanwhile are held and sent after
        it only when newer (by ``rev``), so none is lost or shown out of order."""
        learning = self.app.learning
        if not learning.enabled:
            self.send({"type": "proposals", "enabled": False, "proposals": []})
            return
        async with self._listing:
            self.held_proposals = []
            try:
                if not self.following_proposals:
                    try:
                        await self.app.hub.subscribe(self.store.keys.knowledge_channel(),
                                                     self._on_proposal)
                    except (TimeoutError, RedisError, OSError):
                        raise StoreError("could not subscribe") from None
                    self.following_proposals = True
                pending = await learning.pending()
                self.send({"type": "proposals", "enabled": True, "proposals": pending})
            finally:
                held, self.held_proposals = self.held_proposals, None
            revs = {p["id"]: p["rev"] for p in pending}
            for frame in held:
                proposal = frame["proposal"]
                if proposal.get("rev", 0) > revs.get(proposal.get("id"), -1):
                    self.send(frame)

    def _on_proposal(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "resync":  # pub/sub reconnected: changes may be lost
            self.spawn(self._resend_proposals())
            return
        if frame.get("type") not in ("proposal", "proposal_update") or not isinstance(
                frame.get("proposal"), dict):
            return
        if self.held_proposals is not None:
            self.held_proposals.append(frame)
        elif self.room():
            self.send(frame)

    async def _resend_proposals(self) -> None:
        with contextlib.suppress(StoreError):
            await self._send_proposals()

    def _start_report(self, agent: Agent, since_text: str) -> None:
        """Build the insights report in the background (it reads every conversation of the
        window and clusters questions: seconds), one at a time per console."""
        from bot.cli_report import parse_since

        if not agent.is_admin:
            raise FrameError("forbidden", "only an admin can read the insights report")
        try:
            since = parse_since(since_text)
        except ConfigError:
            raise FrameError("bad_field", "'since' must be like 24h, 7d, 2w, an ISO date from 1970 on, "
                                          "or 'all'") from None
        if self._reporting:
            raise FrameError("busy", "a report is being built; wait for it")
        self._reporting = True
        self.spawn(self._report(since_text, since))

    async def _report(self, label: str, since: float | None) -> None:
        from bot.insights import build_report
        from bot.report_html import render

        try:
            threshold = float(getattr(self.app.learning.pipeline, "intent_threshold", 0.5))
            report = await build_report(self.store, since=since, intent_threshold=threshold,
                                        embed=self.app.learning.embed)
            html = await asyncio.to_thread(render, report)  # matplotlib: blocking
            self.send({"type": "report", "since": label, "generated_at": report["generated_at"],
                       "conversations": report["totals"]["conversations"], "html": html})
        except StoreError as exc:
            log.warning("insights report: %s", exc)
            self.error("unavailable", "briefly unavailable; please retry", action="report")
        except Exception:
            log.exception("insights report failed")
            self.error("report_failed", "the report could not be built; see the server log",
                       action="report")
        finally:
            self._reporting = False

    def _start_copy(self, frame: frames.Copy) -> None:
        """Write ad lines in the background (the model decodes for seconds), one run at a
        time per console, with the model that also writes the bot's replies."""
        if self.app.model is None:
            raise FrameError("lm_off", "this server runs without a language model "
                                       "(language_model.backend: none), so it cannot write ads")
        if self._copying:
            raise FrameError("busy", "ads are being written; wait for them")
        self._copying = True
        self.spawn(self._copy(frame))

    async def _copy(self, frame: frames.Copy) -> None:
        from bot import cli_marketing as cm
        from bot.errors import ProjectError
        from dialogue.copywriting import AdBrief

        try:
            shop = await asyncio.to_thread(cm.load_shop, self.settings.project)
            product = next((p for p in shop.catalog if p.id.casefold() == frame.product_id.casefold()),
                           None)
            if product is None:
                self.error("unknown_product", f"no product {frame.product_id!r} in the catalog",
                           action="copy")
                return
            name, facts, shown = cm.product_facts(product)
            brief = AdBrief(name, facts, frame.audience, frame.keywords, tone=frame.tone,
                            max_chars=frame.max_chars, banned=tuple(shop.banned), shown=shown)
            report = await cm.copy_report(self.app.model, brief, n=frame.n, candidates=3 * frame.n)
            self.send({"type": "copy_result", **report})
        except ProjectError as exc:  # the project's data (banned_words), or facts too long
            self.error("copy_failed", exc.message, action="copy")
        except Exception:
            log.exception("ad lines failed")
            self.error("copy_failed", "the ads could not be written; see the server log", action="copy")
        finally:
            self._copying = False

    # -- watching ---------------------------------------------------------------

    async def _watch(self, sid: str, after: str | None) -> None:
        record = await self.store.session(sid)
        if record is None:
            raise FrameError("unknown_session", "no such conversation (or it expired)")
        await self._unwatch(sid)  # watching again restarts the replay
        if len(self.watches) >= MAX_WATCHES:
            raise FrameError("too_many_watches", f"watch at most {MAX_WATCHES} conversations")
        watch = self.watches[sid] = Watch(self, sid)
        try:
            await self.app.hub.subscribe(self.store.keys.channel(sid), watch.on_live)
        except (TimeoutError, RedisError, OSError):
            del self.watches[sid]
            raise StoreError("could not subscribe") from None
        try:
            replay = await self.store.events(sid, after)
        except StoreError:
            # Live frames past a gap would move the console beyond the missing events: no
            # watch, and the console is told `unavailable` instead of `watching`.
            await self._unwatch(sid)
            raise
        self.send({"type": "watching", "session_id": sid, "session": actions.summary(sid, record),
                   "after": after})
        watch.replay(after, replay)

    async def _unwatch(self, sid: str) -> None:
        watch = self.watches.pop(sid, None)
        if watch is not None:
            await self.app.hub.unsubscribe(self.store.keys.channel(sid), watch.on_live)

