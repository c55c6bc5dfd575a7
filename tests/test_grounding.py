"""The grounding guard, with the demo shop's real FAQ answers, help pages and catalog as evidence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from dialogue.grounding import Evidence, Fact, GroundedStream, extract_facts, unsupported

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"
FAQ_ITEMS = yaml.safe_load((SHOP / "knowledge" / "faq.yml").read_text(encoding="utf-8"))
FAQ: dict[str, str] = {item["id"]: item["answer"] for item in FAQ_ITEMS}
CATALOG = json.loads((SHOP / "catalog.json").read_text(encoding="utf-8"))


def keys(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.key) for f in extract_facts(text)]


def blocked(reply: str, *ids: str) -> list[str]:
    """The unsupported facts of ``reply`` against the FAQ answers ``ids``, as "kind:key"."""
    return [f"{f.kind}:{f.key}" for f in unsupported(reply, [FAQ[i] for i in ids])]


# ------------------------------------------------------------ extraction
@pytest.mark.parametrize("text", [
    "Hi! How can I help?",
    "Hello, I'm Nora, the assistant of Northwind Threads. What can I do for you today?",
    "Feel free to ask me anything else!",
    "I'm sorry to hear that. Let me connect you with a colleague.",
    "One moment, please.",
    "I can't guarantee that, but I'll do my best.",
    "Have a great day!",
    "Thanks for shopping with us 😊",
    "Could you tell me your order number?",
    "Is there anything else I can help you with?",
    "You may want to check My account → Orders.",
    "Great choice! Those are very comfortable and go with one or two outfits.",
    "Happy holidays and merry Christmas!",
    "No problem at all.",
])
def test_ordinary_chat_states_no_facts(text: str) -> None:
    assert extract_facts(text) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("€4.95", [("money", "4.95 eur")]),
    ("4,95 €", [("money", "4.95 eur")]),
    ("4.95 EUR", [("money", "4.95 eur")]),
    ("EUR 4.95", [("money", "4.95 eur")]),
    ("4.95 euros", [("money", "4.95 eur")]),
    ("€60.00 or 60 €", [("money", "60 eur"), ("money", "60 eur")]),
    ("€1,250.50", [("money", "1250.50 eur")]),
    ("30 days, thirty days, a 30-day policy", [("duration", "30 day")] * 3),
    ("5–7 business days", [("duration", "5-7 business day")]),
    ("5-7 working days", [("duration", "5-7 business day")]),
    ("between 3 and 5 days", [("duration", "3-5 day")]),
    ("1 or 2 days", [("duration", "1-2 day")]),
    ("within an hour", [("duration", "1 hour")]),
    ("24h", [("duration", "24 hour")]),
    ("10%, 10 %, ten percent", [("percent", "10%")] * 3),
    ("9:00–18:00 or 9am to 6 p.m.", [("time", "09:00"), ("time", "18:00")] * 2),
    ("we answer 24/7", [("time", "24/7")]),
    ("3 May 2024, May 3rd, 2024-05-03, 03.05.2024",
     [("date", "2024-05-03"), ("date", "05-03"), ("date", "2024-05-03"), ("date", "2024-05-03")]),
    ("in December, on Saturdays, tomorrow, next-day delivery",
     [("date", "december"), ("date", "saturday"), ("date", "tomorrow"), ("date", "next day")]),
    ("Order NW-10234 and product P1001", [("number", "nw10234"), ("number", "p1001")]),
    ("https://www.Northwind-Threads.example/returns/.", [("url", "northwind-threads.example/returns")]),
    ("see /demo/products/P1001", [("url", "/demo/products/p1001")]),
    ("mail Support@northwind-threads.example", [("email", "support@northwind-threads.example")]),
    ("call +49 30 1234567", [("phone", "49301234567")]),
    ("We ship to twenty-seven countries", [("number", "27")]),
    ("free of charge, no restocking fee, for free", [("policy", "free")] * 3),
    ("a money-back guarantee and a lifetime warranty",
     [("policy", "guarantee"), ("policy", "lifetime"), ("policy", "warranty")]),
    ("price match, exchange, store credit, voucher, discount",
     [("policy", "price match"), ("policy", "exchange"), ("policy", "store credit"), ("policy", "voucher"),
      ("policy", "discount")]),
])
def test_extraction_normalises(text: str, expected: list[tuple[str, str]]) -> None:
    assert keys(text) == expected


def test_a_fact_is_reported_as_written() -> None:
    assert extract_facts("Standard delivery costs 4,95 €.") == [Fact("money", "4,95 €", "4.95 eur")]


def test_list_markers_are_not_numbers() -> None:
    assert keys("1. Start your return\n2) Pack the items\nReturn 1 or 2 items.") == [("number", "1"),
                                                                                       ("number", "2")]


# -------------------------------------------------------------- supported
@pytest.mark.parametrize(("reply", "ids"), [
    ("Happy to help! Standard delivery costs 4,95 € and it's free on orders over 60 euros.",
     ["shipping-costs"]),
    ("Express delivery costs EUR 9.95 and arrives in 1-2 business days.", ["shipping-express"]),
    ("Standard delivery usually takes 3 to 5 days after dispatch.", ["shipping-times"]),
    ("You have thirty days to send it back, and returns are free of charge.", ["returns-policy"]),
    ("Your refund arrives within 5–7 business days.", ["returns-refund-time"]),
    ("We refund to your original payment method, not as store credit.", ["returns-refund-method"]),
    ("Our team is there Mon–Fri from 9 am to 6 pm CET.", ["contact-support"]),
    ("Our team is there on Wednesday.", ["contact-support"]),
    ("Write to support@northwind-threads.example.", ["contact-support"]),
    ("Subscribers get 10 percent off, a nice discount on the first order.", ["newsletter"]),
    ("Send me your order number, for example NW-10234.", ["shipping-tracking"]),
    ("The reset link is valid for twenty-four hours.", ["account-password-reset"]),
    ("Changes are possible within an hour of ordering.", ["order-change"]),
    ("Our shoes come in sizes 36 to 46, so a 42 is available.", ["sizes-shoes"]),
    ("All products carry a two-year warranty, that's 24 months.", ["returns-faulty"]),
    ("Exchanges are free within 30 days.", ["exchanges"]),
    ("We ship to all 27 EU countries.", ["shipping-countries"]),
    ("There's no restocking fee at all.", ["returns-restocking-fee"]),
    ("Standard delivery is free on orders over €60, but express always costs €9.95.", ["shipping-free"]),
])
def test_grounded_replies_pass(reply: str, ids: list[str]) -> None:
    assert blocked(reply, *ids) == []


# ------------------------------------------------------------ unsupported
@pytest.mark.parametrize(("reply", "ids", "expected"), [
    ("Standard delivery is €5.95.", ["shipping-costs"], ["money:5.95 eur"]),
    ("Orders over €54.95 ship free.", ["shipping-free"], ["money:54.95 eur"]),
    ("That's 5 euros.", ["shipping-free"], ["money:5 eur"]),
    ("You can return items within 60 days.", ["returns-policy"], ["duration:60 day"]),
    ("Delivery takes 5 business days.", ["shipping-times"], ["duration:5 business day"]),
    ("Your refund arrives within 5 business days.", ["returns-refund-time"], ["duration:5 business day"]),
    ("The link is valid for 48 hours.", ["account-password-reset"], ["duration:48 hour"]),
    ("We offer a lifetime warranty.", ["returns-faulty"], ["policy:lifetime"]),
    ("Every order has a money-back guarantee.", ["returns-policy"], ["policy:guarantee"]),
    ("We also price match other shops.", ["payment-prices"], ["policy:price match"]),
    ("You'll receive store credit for the return.", ["returns-refund-time"], ["policy:store credit"]),
    ("Newsletter subscribers get 15% off.", ["newsletter"], ["percent:15%"]),
    ("Our team is there on Saturday.", ["contact-support"], ["date:saturday"]),
    ("Our team is available 24/7.", ["contact-support"], ["time:24/7"]),
    ("Call us at +49 30 1234567.", ["contact-support"], ["phone:49301234567"]),
    ("See northwind-threads.example/returns for details.", ["returns-how-to"],
     ["url:northwind-threads.example/returns"]),
    ("Your order NW-10299 has shipped.", ["shipping-tracking"], ["number:nw10299"]),
    ("Shoes come in sizes 36 to 47.", ["sizes-shoes"], ["number:47"]),
    ("It will arrive tomorrow.", ["shipping-times"], ["date:tomorrow"]),
    ("Express delivery is free.", ["shipping-costs", "shipping-express"], ["policy:express", "policy:free"]),
    ("You can pay with cash on delivery.", ["payment-klarna"], ["policy:cash on delivery"]),
])
def test_invented_facts_are_caught(reply: str, ids: list[str], expected: list[str]) -> None:
    assert blocked(reply, *ids) == expected


def test_part_of_a_larger_number_is_not_support() -> None:
    # "5" and "4" are inside "€54.95"; only whole numbers count.
    assert blocked("Delivery costs 5.", "shipping-costs") == ["number:5"]
    assert unsupported("You can pick 4 items.", ["A jacket costs €54.95."]) == [Fact("number", "4", "4")]
    assert unsupported("That's 54.95.", ["A jacket costs €54.95."]) == []


def test_small_counts_need_evidence_too() -> None:
    assert blocked("You can return 1 or 2 items.", "returns-policy") == ["number:1", "number:2"]
    assert blocked("You can return one or two items.", "returns-policy") == []  # words: ordinary wording


def test_qualifier_direction_for_durations() -> None:
    assert unsupported("It takes 3-5 days.", ["It takes 3–5 business days."]) == []
    assert [f.key for f in unsupported("It takes 3-5 business days.", ["It takes 3–5 days."])] == [
        "3-5 business day"]
    assert unsupported("That is two weeks.", ["You have 14 days."]) == []


def test_catalog_prices_and_ids_are_evidence() -> None:
    product = json.dumps(CATALOG[0])  # Harbor Runner, P1001, 89.95 EUR
    assert unsupported("The Harbor Runner (P1001) costs €89.95 in white, black or navy.", [product]) == []
    assert [f.key for f in unsupported("The Harbor Runner costs €79.95.", [product])] == ["79.95 eur"]
    assert [f.key for f in unsupported("It costs $89.95.", [product])] == ["89.95 usd"]
    assert unsupported("See /demo/products/P1001.", [product]) == []


@pytest.mark.parametrize(("reply", "key"), [
    ("It costs 4.95 pounds.", "4.95 gbp"),
    ("It costs US$4.95.", "4.95 usd"),
    ("It costs 4.95 US dollars.", "4.95 usd"),
    ("It costs 4.95 francs.", "4.95 chf"),
    ("It costs 4.95 cents.", "4.95 cent"),
    ("It costs C$4.95.", "4.95 cad"),
    ("It costs A$4.95.", "4.95 aud"),
])
def test_a_price_in_another_currency_is_not_supported(reply: str, key: str) -> None:
    # Each was read as the bare number 4.95, which "€4.95" states.
    facts = unsupported(reply, ["Standard delivery costs €4.95."])
    assert [(f.kind, f.key) for f in facts] == [("money", key)]


def test_a_price_in_the_same_currency_is_supported() -> None:
    assert unsupported("It costs €4.95.", ["Standard delivery costs €4.95."]) == []
    assert unsupported("It costs 4.95 pounds, that is £4.95.", ["It costs £4.95."]) == []
    assert unsupported("It costs US$4.95, or 4.95 US dollars.", ["It costs $4.95."]) == []
    assert unsupported("It costs 4.95 Swiss francs.", ["It costs CHF 4.95."]) == []


def test_a_dot_before_three_digits_separates_thousands() -> None:
    evidence = ["Orders over €1.000 need a signature."]
    assert unsupported("Orders over €1,000 need a signature.", evidence) == []
    assert [f.key for f in unsupported("Orders over €1 need a signature.", evidence)] == ["1 eur"]
    assert keys("€1.000 and 2.500 items") == [("money", "1000 eur"), ("number", "2500")]
    assert keys("€4.95 and 0.500 kg") == [("money", "4.95 eur"), ("number", "0.5")]  # decimals stay


def test_markdown_help_page_is_evidence() -> None:
    page = (SHOP / "knowledge" / "shipping.md").read_text(encoding="utf-8")
    assert unsupported("Express costs €9.95 and takes 1–2 business days after dispatch.", [page]) == []
    assert [f.key for f in unsupported("Express costs €9.95 and takes 4 days.", [page])] == ["4 day"]


def test_evidence_can_be_reused() -> None:
    evidence = Evidence([FAQ["shipping-costs"], FAQ["shipping-times"]])
    assert evidence.unsupported("Standard is €4.95 and takes 3–5 business days.") == []
    assert evidence.supports(Fact("money", "€9.95", "9.95 eur"))
    assert not evidence.supports(Fact("money", "€5", "5 eur"))
    assert unsupported("It's €4.95.", evidence) == []


# ---------------------------------------------------------------- streaming
class Source:
    """An LM stream stand-in: an async generator that records how far it got and whether it was closed."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.produced = 0
        self.closed = False
        self.finished = False

    async def stream(self) -> AsyncIterator[str]:
        try:
            for chunk in self.chunks:
                await asyncio.sleep(0)
                self.produced += 1
                yield chunk
            self.finished = True
        finally:
            self.closed = True


async def collect(stream: GroundedStream) -> list[str]:
    return [piece async for piece in stream]


async def test_stream_releases_grounded_sentences() -> None:
    chunks = ["Happy to help! Standard deli", "very costs €4.", "95 and is free on orders ", "over €60.\n",
              "Anything else?"]
    source = Source(chunks)
    stream = GroundedStream(source.stream(), [FAQ["shipping-costs"]])
    pieces = await collect(stream)
    assert pieces == ["Happy to help! ", "Standard delivery costs €4.95 and is free on orders over €60.\n",
                      "Anything else?"]
    assert stream.released == "".join(chunks) and stream.blocked == []
    assert source.finished and source.closed


async def test_stream_stops_and_closes_the_source_at_an_unsupported_sentence() -> None:
    source = Source(["Sure! ", "Returns are free within 30 days. ", "Refunds take 3 days. ",
                     "We also give store credit. ", "Bye!"])
    stream = GroundedStream(source.stream(), [FAQ["returns-policy"], FAQ["returns-refund-time"]])
    pieces = await collect(stream)
    assert pieces == ["Sure! ", "Returns are free within 30 days. "]
    assert stream.released == "Sure! Returns are free within 30 days. "
    assert stream.blocked == [Fact("duration", "3 days", "3 day")]
    assert source.closed and not source.finished
    assert source.produced == 3  # the sentence ended with its own chunk: nothing more was generated


async def test_block_calls_aclose_on_the_source() -> None:
    class Spy:
        """Records the calls a GroundedStream makes on its source."""

        def __init__(self, chunks: list[str]) -> None:
            self.chunks, self.aclose_calls, self.reads = iter(chunks), 0, 0

        def __aiter__(self) -> Spy:
            return self

        async def __anext__(self) -> str:
            self.reads += 1
            try:
                return next(self.chunks)
            except StopIteration:
                raise StopAsyncIteration from None

        async def aclose(self) -> None:
            self.aclose_calls += 1

    spy = Spy(["Returns are free. ", "Express is €2.99. ", "More text. "])
    stream = GroundedStream(spy, [FAQ["returns-policy"]])
    assert await collect(stream) == ["Returns are free. "]
    assert spy.aclose_calls == 1 and spy.reads == 2
    assert [f.text for f in stream.blocked] == ["Express", "€2.99"]


async def test_stream_checks_the_unterminated_last_sentence() -> None:
    source = Source(["Express costs €9.95. ", "Standard costs €3.95"])
    stream = GroundedStream(source.stream(), [FAQ["shipping-costs"]])
    assert await collect(stream) == ["Express costs €9.95. "]
    assert [f.key for f in stream.blocked] == ["3.95 eur"]


async def test_stream_blocks_the_first_sentence_and_releases_nothing() -> None:
    source = Source(["We offer a lifetime warranty on everything. ", "Returns are free."])
    stream = GroundedStream(source.stream(), [FAQ["returns-faulty"]])
    assert await collect(stream) == []
    assert stream.released == "" and [f.key for f in stream.blocked] == ["lifetime"]  # "warranty" is there
    assert source.closed and source.produced == 1


async def test_consumer_leaving_early_closes_the_source() -> None:
    source = Source(["One. ", "Two. ", "Three. "])
    stream = GroundedStream(source.stream(), [])
    iterator = aiter(stream)
    assert await anext(iterator) == "One. "
    await iterator.aclose()  # type: ignore[attr-defined]
    assert source.closed and not source.finished


async def test_cancelling_the_consumer_cancels_the_generation() -> None:
    started, closed = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            yield "Hello. "
            started.set()
            await asyncio.sleep(3600)  # a generation that would run on
            yield "never"
        finally:
            closed.set()

    stream = GroundedStream(slow(), [])
    task = asyncio.create_task(collect(stream))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set() and stream.released == "Hello. "


async def test_source_without_aclose_and_single_use() -> None:
    class Plain:
        def __init__(self) -> None:
            self.items = iter(["It costs €9.95. "])

        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> str:
            try:
                return next(self.items)
            except StopIteration:
                raise StopAsyncIteration from None

    stream = GroundedStream(Plain(), [FAQ["shipping-express"]])
    assert await collect(stream) == ["It costs €9.95. "]
    with pytest.raises(RuntimeError, match="only once"):
        aiter(stream)
