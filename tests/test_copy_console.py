"""Ad lines through the agent console (``copy`` frames), without a real model: the frame's
checks at the edge, a server without a language model, an unknown product, one run at a
time per console. tests/lm/test_copy_console_lm.py runs the real embedded model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import agent_frames as frames
from bot.brain import Brain
from bot.errors import FrameError
from tests.conftest import SHOP, TINYBOT, Servers, tiny_engine
from tests.test_agent_socket import signed_in

ASK = {"type": "copy", "product_id": "P1001", "audience": "runners", "keywords": ["light"], "n": 1,
       "tone": "friendly"}


class ScriptedModel:
    """Writes the same ad lines on every stream, after a pause (long enough to be busy)."""

    name = "scripted"

    async def stream(self, messages: list[Any], *, max_tokens: int, temperature: float, top_p: float,
                     seed: int, usage: Any) -> AsyncIterator[str]:
        await asyncio.sleep(0.3)
        for line in ("Harbor Runner: light on your feet for every run.\n",
                     "Meet Harbor Runner, light and ready for you.\n"):
            yield line
        usage.finish_reason = "stop"


async def start(servers: Servers, model: Any) -> Any:
    return await servers.start(brain=Brain(tiny_engine(TINYBOT), model=model), project=SHOP)


def test_copy_frames_are_checked_at_the_edge() -> None:
    def parse(**changes: Any) -> frames.Copy:
        frame = {**ASK, **changes}
        return frames.parse(json.dumps({k: v for k, v in frame.items() if v is not None}),
                            max_bytes=65536, max_text=2000)  # type: ignore[return-value]

    assert parse(n=None, tone=None) == frames.Copy("P1001", "runners", ("light",), 5, 90, "friendly")
    assert parse(max_chars=30).max_chars == 30
    bad: dict[str, Any]
    for bad in ({"n": 0}, {"n": 11}, {"n": True}, {"n": "3"}, {"max_chars": 29}, {"max_chars": 201},
                {"tone": "loud"}, {"keywords": []}, {"keywords": ["a,b"]}, {"keywords": [3]},
                {"keywords": "light"}, {"keywords": ["!!"]}, {"audience": " "}, {"product_id": ""}):
        with pytest.raises(FrameError) as caught:
            parse(**bad)
        assert caught.value.code == "bad_field", bad


async def test_without_a_language_model_copy_is_off(servers: Servers) -> None:
    agent = await signed_in(await start(servers, None), "anna")
    error = await agent.act(ASK)
    assert error["type"] == "error" and error["code"] == "lm_off", error
    assert "language model" in error["message"]


async def test_bad_frames_and_unknown_products_are_refused(servers: Servers) -> None:
    agent = await signed_in(await start(servers, ScriptedModel()), "anna")
    assert (await agent.act({**ASK, "n": 50}))["code"] == "bad_field"
    assert (await agent.act({**ASK, "tone": "shouty"}))["code"] == "bad_field"
    error = await agent.act({**ASK, "product_id": "NOPE"})
    assert error["code"] == "unknown_product" and error["action"] == "copy", error


async def test_one_run_at_a_time_per_console(servers: Servers) -> None:
    agent = await signed_in(await start(servers, ScriptedModel()), "anna")
    await agent.send(ASK)
    await agent.send(ASK)
    seen = await agent.until(lambda f: f["type"] == "copy_result", timeout=20)
    assert [f["code"] for f in seen if f["type"] == "error"] == ["busy"]
    result = seen[-1]
    assert result["product"] == "Harbor Runner" and result["model"] == "scripted"
    assert result["requested"] == 1 and result["generated"] >= 2 and result["variants"]
    assert "cheap" in result["banned"]  # the project's banned_words
    await agent.send(ASK)  # free again once the result is out
    again = (await agent.until(lambda f: f["type"] in ("copy_result", "error"), timeout=20))[-1]
    assert again["type"] == "copy_result", again


class GatedModel(ScriptedModel):
    """Writes its ad lines only once the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def stream(self, messages: list[Any], **kwargs: Any) -> AsyncIterator[str]:
        await self.gate.wait()
        async for line in super().stream(messages, **kwargs):
            yield line


async def test_a_report_finishing_does_not_free_a_running_copy(servers: Servers) -> None:
    model = GatedModel()
    admin = await signed_in(await start(servers, model), "root", "admin")
    await admin.send(ASK)
    await admin.send({"type": "report", "since": "24h"})
    report = (await admin.until(lambda f: f["type"] in ("report", "error"), timeout=60))[-1]
    assert report["type"] == "report", report
    refused = await admin.act(ASK)  # the first run is still writing
    assert refused["type"] == "error" and refused["code"] == "busy", refused
    model.gate.set()
    done = (await admin.until(lambda f: f["type"] in ("copy_result", "error"), timeout=20))[-1]
    assert done["type"] == "copy_result", done
