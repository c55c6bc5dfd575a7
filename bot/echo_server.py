"""A bare websockets server that speaks just enough of ``/ws/chat`` to be load-tested.

``deskmate bench load`` drives it exactly as it drives deskmate, to show the
ceiling of the transport alone: the same ``websockets`` server options (and so
permessage-deflate), JSON frames, one asyncio loop — but no Redis, no
classifier, no dialogue. ``start`` is answered with ``session``; a ``message`` or
``action`` with ``ack``, then its own text said back word by word the way
deskmate streams a reply (``typing`` on, ``stream_start``, a ``stream_delta``
per word, ``stream_end``, ``typing`` off).

Run: ``python -m bot.echo_server --port 0`` (prints the URL it listens on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

MAX_FRAME = 1 << 20  # bot.server.HARD_MAX_FRAME (not imported: this server stays bare)
_WORDS = re.compile(r"\S+\s*")


class _Ids:
    """Stream-id-like event ids (``<ms>-<seq>``), increasing."""

    def __init__(self) -> None:
        self.ms, self.seq = 0, 0

    def next(self) -> str:
        ms = int(time.time() * 1000)
        self.seq = self.seq + 1 if ms <= self.ms else 0
        self.ms = max(ms, self.ms)
        return f"{self.ms}-{self.seq}"


async def handle(ws: ServerConnection, ids: _Ids) -> None:
    sid = uuid.uuid4().hex

    async def send(frame: dict[str, Any]) -> None:
        await ws.send(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))

    try:
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "start":
                await send({"type": "session", "session_id": sid, "token": uuid.uuid4().hex,
                            "status": "bot"})
            elif kind in ("message", "action"):
                text = str(frame.get("text") or frame.get("title") or frame.get("payload") or "")
                await send({"type": "ack", "client_id": frame.get("client_id"), "event_id": ids.next()})
                stream = uuid.uuid4().hex
                await send({"type": "typing", "session_id": sid, "role": "bot", "on": True})
                await send({"type": "stream_start", "session_id": sid, "stream_id": stream, "role": "bot"})
                for word in _WORDS.findall(text):
                    await send({"type": "stream_delta", "session_id": sid, "stream_id": stream,
                                "text": word})
                await send({"type": "stream_end", "session_id": sid, "stream_id": stream,
                            "event_id": ids.next(), "text": text, "buttons": [], "cards": []})
                await send({"type": "typing", "session_id": sid, "role": "bot", "on": False})
            else:
                await send({"type": "error", "code": "unknown_type", "message": "echo server"})
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    ids = _Ids()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The options deskmate's server uses (bot/server.py), so only the work per frame differs.
    async with serve(lambda ws: handle(ws, ids), host, port, max_size=MAX_FRAME,
                     ping_interval=20, ping_timeout=20, close_timeout=5) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"echo server listening on ws://{host}:{bound}/ws/chat", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
