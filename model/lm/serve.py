"""``deskmate model serve``: the embedded engine behind an OpenAI-compatible HTTP API.

``POST /v1/chat/completions`` (JSON, or SSE when ``"stream": true``) and ``GET
/v1/models``, enough for the OpenAI SDKs, :class:`~model.lm.remote.RemoteChatModel`,
and so for several deskmate instances sharing one model process. Built on aiohttp.
Handlers are cancelled when the client disconnects, which closes the engine stream
and frees the request's slot at the next step.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from model.lm.api import (
    ChatModel,
    ContextOverflowError,
    EngineClosedError,
    InvalidRequestError,
    LMError,
    Message,
    Usage,
    check_messages,
)

log = logging.getLogger(__name__)

MODEL_KEY: web.AppKey[ChatModel] = web.AppKey("model", ChatModel)


def _error(status: int, message: str, code: str) -> web.Response:
    # OpenAI's error types: the client's fault (4xx) or the server's (5xx).
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


def _status_of(exc: LMError) -> int:
    if isinstance(exc, ContextOverflowError | InvalidRequestError):
        return 400
    if isinstance(exc, EngineClosedError):
        return 503
    return 500


def parse_request(body: Any) -> tuple[list[Message], dict[str, Any], bool, bool]:
    """Validate a chat-completions body into (messages, stream kwargs, stream?, include usage?)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body must be a JSON object")
    messages = check_messages(body.get("messages") or [])
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("stop must be a string or a list of strings")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 256))
    kwargs: dict[str, Any] = {"stop": stop}
    for key, value, kind in (("max_tokens", max_tokens, int), ("temperature", body.get("temperature", 1.0),
                             (int, float)), ("top_p", body.get("top_p", 1.0), (int, float)),
                             ("seed", body.get("seed"), (int, type(None)))):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidRequestError(f"{key} has the wrong type: {value!r}")
        kwargs[key] = value
    if body.get("ignore_eos"):         # vLLM's extension; the benchmark uses it
        kwargs["ignore_eos"] = True
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    return messages, kwargs, stream, bool(isinstance(options, dict) and options.get("include_usage"))


async def models(request: web.Request) -> web.Response:
    model = request.app[MODEL_KEY]
    return web.json_response({"object": "list", "data": [
        {"id": model.name, "object": "model", "created": 0, "owned_by": "deskmate"}]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    model = request.app[MODEL_KEY]
    try:
        messages, kwargs, stream, include_usage = parse_request(await request.json())
    except (ValueError, LMError) as exc:  # JSONDecodeError is a ValueError
        return _error(400, str(exc), getattr(exc, "code", "invalid_json"))
    usage = Usage()
    deltas = _guarded(model.stream(messages, usage=usage, **kwargs))
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    try:
        # Wait for the first delta before answering, so errors (context overflow) get a status.
        first: list[str] = [await deltas.__anext__()]
    except StopAsyncIteration:
        first = []
    except LMError as exc:
        return _error(_status_of(exc), str(exc), exc.code)
    try:
        if stream:
            return await _sse(request, deltas, first, usage, rid, created, model.name, include_usage)
        text = "".join(first) + "".join([d async for d in deltas])
    except LMError as exc:
        return _error(_status_of(exc), str(exc), exc.code)
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    return web.json_response({
        "id": rid, "object": "chat.completion", "created": created, "model": model.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": usage.finish_reason or "stop"}],
        "usage": _usage(usage)})


async def _guarded(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """``deltas``, with an unexpected failure (a bug, not an :class:`LMError`) logged and
    turned into an :class:`LMError`, so the client still gets OpenAI's error shape (JSON 500,
    or the in-band event) rather than aiohttp's plain-text 500 or a cut stream."""
    try:
        async for delta in deltas:
            yield delta
    except LMError:
        raise
    except Exception as exc:
        log.exception("chat completion failed")
        raise LMError(f"internal error: {exc!r}") from exc
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def _usage(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


async def _sse(request: web.Request, deltas: AsyncIterator[str], first: Sequence[str], usage: Usage,
               rid: str, created: int, name: str, include_usage: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    await response.write(chunk({"role": "assistant", "content": ""}))
    try:
        for text in first:
            await response.write(chunk({"content": text}))
        async for text in deltas:
            await response.write(chunk({"content": text}))
    except LMError as exc:
        # Headers are gone already: report in-band, as OpenAI-compatible servers do.
        err = {"error": {"message": str(exc), "type": "server_error", "code": exc.code}}
        await response.write(f"data: {json.dumps(err)}\n\n".encode())
        return response
    await response.write(chunk({}, usage.finish_reason or "stop"))
    if include_usage:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
               "choices": [], "usage": _usage(usage)}
        await response.write(f"data: {json.dumps(obj)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_app(model: ChatModel) -> web.Application:
    """The aiohttp application serving ``model``."""
    app = web.Application(client_max_size=4 * 2**20)
    app[MODEL_KEY] = model
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


@asynccontextmanager
async def running(model: ChatModel, *, host: str = "127.0.0.1", port: int = 8000) -> AsyncIterator[int]:
    """Serve ``model`` while the block runs; yields the bound port (use ``port=0`` in tests)."""
    # handler_cancellation: a client that hangs up cancels its handler, freeing the slot.
    runner = web.AppRunner(create_app(model), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()


async def serve_forever(model: ChatModel, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run until cancelled (Ctrl-C in ``deskmate model serve``)."""
    import asyncio

    async with running(model, host=host, port=port) as bound:
        log.info("serving %s on http://%s:%d/v1", model.name, host, bound)
        print(f"deskmate model serve: {model.name} on http://{host}:{bound}/v1", flush=True)
        await asyncio.Event().wait()
