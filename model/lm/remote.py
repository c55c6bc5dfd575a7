"""A :class:`~model.lm.api.ChatModel` backed by any OpenAI-compatible server.

vLLM, TGI, llama.cpp's server, Ollama, ``transformers serve`` or ``deskmate model
serve`` — the scale-out path: many deskmate instances, one inference cluster.
Configuration comes from the environment (:meth:`RemoteConfig.from_env`) and fails
loudly on a bad value. Connection failures, 429 and 5xx answers are retried with
backoff *before* the first text arrives; once text has been handed to the caller a
broken stream raises :class:`RemoteStreamError` instead (a retry would repeat text).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from model.lm.api import (
    ContextOverflowError,
    InvalidRequestError,
    LMError,
    Message,
    SamplingParams,
    Usage,
    check_messages,
)

RETRYABLE = {408, 429, 500, 502, 503, 504}


class RemoteError(LMError):
    """The remote server answered with an error, or could not be reached."""

    code = "remote_error"

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(f"{url}: {message}" if url else message)
        self.status = status
        self.url = url


class RemoteStreamError(RemoteError):
    """The stream broke (server gone, read timeout) after text was already delivered."""

    code = "remote_stream_broken"


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how to reach the server (defaults written out)."""

    base_url: str                        # e.g. http://gpu-box:8000/v1
    model: str                           # the server's model id
    api_key: str | None = None           # sent as "Authorization: Bearer ..."
    connect_timeout: float = 5.0         # seconds to open the TCP connection
    read_timeout: float = 30.0           # seconds of silence allowed between chunks
    retries: int = 2                     # extra attempts before the first delta
    backoff: float = 0.5                 # seconds, doubled each retry

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RemoteConfig:
        """``DESKMATE_LM_BASE_URL`` and ``DESKMATE_LM_MODEL_NAME`` (required),
        ``DESKMATE_LM_API_KEY``, ``DESKMATE_LM_TIMEOUT`` (read), ``DESKMATE_LM_RETRIES``."""
        env = os.environ if environ is None else environ
        missing = [k for k in ("DESKMATE_LM_BASE_URL", "DESKMATE_LM_MODEL_NAME") if not env.get(k)]
        if missing:
            raise ValueError(f"remote language model needs {', '.join(missing)} in the environment")
        try:
            read_timeout = float(env.get("DESKMATE_LM_TIMEOUT", "30"))
            retries = int(env.get("DESKMATE_LM_RETRIES", "2"))
        except ValueError as exc:
            raise ValueError(f"DESKMATE_LM_TIMEOUT / DESKMATE_LM_RETRIES: {exc}") from None
        if read_timeout <= 0 or retries < 0:
            raise ValueError("DESKMATE_LM_TIMEOUT must be > 0 and DESKMATE_LM_RETRIES >= 0")
        return cls(base_url=env["DESKMATE_LM_BASE_URL"], model=env["DESKMATE_LM_MODEL_NAME"],
                   api_key=env.get("DESKMATE_LM_API_KEY") or None, read_timeout=read_timeout,
                   retries=retries)


class RemoteChatModel:
    """Streams chat completions from a remote server; same API as the embedded engine."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.name = config.model
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    async def stream(self, messages: Sequence[Message], *, max_tokens: int = 256,
                     temperature: float = 0.0, top_p: float = 1.0, stop: Sequence[str] = (),
                     seed: int | None = None, usage: Usage | None = None,
                     ignore_eos: bool = False) -> AsyncIterator[str]:
        """Text deltas of the reply (see :class:`~model.lm.api.ChatModel`)."""
        SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                       stop=tuple(stop), seed=seed).validate()
        body: dict[str, Any] = {
            "model": self.config.model, "messages": check_messages(messages), "stream": True,
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "stream_options": {"include_usage": True}}
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if ignore_eos:
            body["ignore_eos"] = True  # vLLM / deskmate extension, for benchmarks
        usage = usage if usage is not None else Usage()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout,
                                        sock_read=self.config.read_timeout)
        delivered = False
        attempt = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                attempt_deltas = self._attempt(session, body, usage)
                try:
                    async for delta in attempt_deltas:
                        delivered = True
                        yield delta
                    return
                except (aiohttp.ClientError, TimeoutError, RemoteError) as exc:
                    status = exc.status if isinstance(exc, RemoteError) else None
                    if isinstance(exc, RemoteError) and status is not None and status not in RETRYABLE:
                        raise
                    if delivered:
                        if isinstance(exc, RemoteStreamError):
                            raise                   # the server's own in-stream error
                        raise RemoteStreamError(f"stream broke after text was sent: {exc!r}",
                                                url=self.url) from exc
                    if attempt >= self.config.retries:
                        if isinstance(exc, RemoteError):
                            raise
                        raise RemoteError(f"unreachable after {attempt + 1} attempts: {exc!r}",
                                          url=self.url) from exc
                    await asyncio.sleep(self.config.backoff * 2**attempt)
                    attempt += 1
                finally:
                    # Close the HTTP response now (not at garbage collection), so the server
                    # sees the hang-up and frees the request's slot at once.
                    await attempt_deltas.aclose()  # type: ignore[attr-defined]

    async def _attempt(self, session: aiohttp.ClientSession, body: dict[str, Any],
                       usage: Usage) -> AsyncIterator[str]:
        async with session.post(self.url, json=body, headers=self._headers()) as resp:
            if resp.status != 200:
                raise _http_error(resp.status, await resp.text(), self.url)
            finished = False
            async for raw in resp.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue                        # comments, keep-alives, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                obj = _event(data, self.url)
                if obj.get("usage"):
                    usage.prompt_tokens = obj["usage"].get("prompt_tokens", 0)
                    usage.completion_tokens = obj["usage"].get("completion_tokens", 0)
                for choice in obj.get("choices") or []:
                    if choice.get("finish_reason"):
                        usage.finish_reason = choice["finish_reason"]
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
            if not finished:
                raise aiohttp.ClientPayloadError("stream ended without [DONE]")
        # (leaving the block early - consumer gone - closes the connection: the body is unread)


def _event(data: str, url: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as a JSON object; an error event, or a line that is not
    a JSON object, is a :class:`RemoteStreamError` carrying the server's message."""
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise RemoteStreamError(f"malformed stream event: {data[:200]!r}", url=url)
    if "error" in obj:
        # OpenAI and vLLM send {"error": {"message": ...}}; TGI sends {"error": "...", "error_type": ...}.
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        raise RemoteStreamError(str(message), url=url)
    return obj


def _http_error(status: int, text: str, url: str) -> LMError:
    try:
        err = json.loads(text).get("error", {})
        message, code = str(err.get("message", text)), err.get("code")
    except (ValueError, AttributeError):
        message, code = text[:500], None
    if status == 400 and code == ContextOverflowError.code:
        exc: LMError = RemoteError(message, status=status, url=url)
        exc.code = ContextOverflowError.code
        return exc
    if status == 400:
        return InvalidRequestError(f"{url}: {message}")
    return RemoteError(f"HTTP {status}: {message}", status=status, url=url)
