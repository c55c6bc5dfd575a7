"""The real embedded model answering through the dialogue engine: the demo shop's
chit-chat is generated, streamed, and only grounded sentences reach the customer."""

from __future__ import annotations

from typing import Any

from dialogue.engine import DialogueEngine
from dialogue.generate import Writer
from dialogue.grounding import unsupported
from dialogue.project import load_project
from dialogue.types import Conversation, StreamedReply, TurnAnalysis, UserMessage
from model.lm import PromptBudget, PromptBuilder
from tests.conftest import SHOP


async def test_chitchat_is_generated_by_the_model_and_grounded(engine: Any) -> None:
    project = load_project(SHOP)
    project.config.setdefault("language_model", {})["max_tokens"] = 40
    writer = Writer(engine, PromptBuilder(engine.count_tokens, PromptBudget(context=engine.context,
                                                                            reply_tokens=40)),
                    project.config)
    bot = DialogueEngine(project, writer=writer)
    chunks: list[str] = []
    analysis = None
    async for out in bot.respond(Conversation("s", "bot"),
                                 UserMessage("1-1", "are you a robot?", None,
                                             {"intent": "chitchat", "confidence": 0.97})):
        if isinstance(out, StreamedReply):
            chunks = [c async for c in out.chunks]
        elif isinstance(out, TurnAnalysis):
            analysis = out
    assert analysis is not None and analysis.policy.startswith("generative")
    reply = "".join(chunks).strip()
    assert reply
    if analysis.policy == "generative":  # the model's own words, released sentence by sentence
        chitchat = [v["text"] for v in project.responses["utter_chitchat"]]
        assert not unsupported(reply, chitchat)
