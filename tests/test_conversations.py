"""The demo shop's conversation tests (examples/shop/tests/*.yml), one pytest case each,
run through the real engine: the trained classifier, the knowledge base embedded with the
shared encoder, the shop's rasa-sdk actions on the test Redis. No language model: intents
it would answer fall back to their rules, as `deskmate test` does by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dialogue.convtest import ConversationRunner, conversation_files, load_tests
from dialogue.engine import DialogueEngine
from tests.conftest import SHOP

CONVERSATIONS = load_tests(conversation_files(SHOP))


def test_the_demo_shop_has_enough_conversation_tests() -> None:
    assert len(CONVERSATIONS) >= 40
    names = " ".join(t.name for t in CONVERSATIONS)
    for unhappy in ("complaint", "out of scope", "cannot answer", "changing", "switch", "stop a form"):
        assert unhappy in names or unhappy.replace("changing", "switch") in names, unhappy


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=[t.name for t in CONVERSATIONS])
async def test_conversation(conversation: Any, shop_actions_env: None,
                            shop_parts: tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]],
                            ) -> None:
    engine, understand = shop_parts
    failure = await ConversationRunner(engine, understand).run(conversation)
    assert failure is None, str(failure)
