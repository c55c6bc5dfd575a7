"""``copy`` frames through the agent console with the real embedded model as the server's
language model: the console gets ``deskmate copy --json``'s report, and what it shows as
passing passes the checks."""

from __future__ import annotations

from typing import Any

from bot import cli_marketing as cm
from bot.brain import Brain
from dialogue import copywriting as cw
from tests.conftest import SHOP, Servers
from tests.lm.test_marketing_lm import VARIANT_KEYS
from tests.test_agent_socket import signed_in

REPORT_KEYS = {"product", "audience", "keywords", "tone", "max_chars", "banned", "model", "seconds",
               "requested", "rounds", "generated", "unique", "passed", "duplicates", "enough", "weights",
               "warnings", "variants"}


async def test_copy_through_the_console_with_the_real_model(
        servers: Servers, shop_parts: tuple[Any, Any], engine: Any) -> None:
    dialogue, understand = shop_parts
    server = await servers.start(brain=Brain(dialogue, understand, model=engine), project=SHOP)
    agent = await signed_in(server, "anna")
    await agent.send({"type": "copy", "product_id": "P1001", "audience": "runners",
                      "keywords": ["light"], "n": 2, "max_chars": 90, "tone": "friendly"})
    result = (await agent.until(lambda f: f["type"] in ("copy_result", "error"), timeout=240))[-1]
    assert result["type"] == "copy_result", result
    assert set(result) == REPORT_KEYS | {"type"}
    assert result["product"] == "Harbor Runner" and result["keywords"] == ["light"]
    assert result["requested"] == 2 and result["generated"] >= 1 and result["variants"]

    shop = cm.load_shop(SHOP)
    name, facts, shown = cm.product_facts(shop.product("P1001"))
    checker = cw.AdChecker(cw.AdBrief(name, facts, "runners", ("light",), banned=tuple(shop.banned),
                                      shown=shown))
    for v in result["variants"]:
        assert set(v) == VARIANT_KEYS
        recheck = [str(p) for p in checker.problems(v["text"])]
        if v["status"] in ("selected", "passed"):
            assert v["passed"] and recheck == [] and len(v["text"]) <= 90, v
        else:
            assert v["status"] in ("duplicate", "rejected")
