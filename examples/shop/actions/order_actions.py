"""The order actions: status, cancel, start a return (names as in ``domain.yml``).

Each follows the rasa-sdk contract: text goes out through the dispatcher, state
changes come back as events. The order number comes from the ``order_id`` slot
(filled by the forms in ``domain.yml``); a number that names no order is answered
with ``utter_order_not_found`` and the slot is cleared so the form asks again.
"""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from .orders import OrderBook
from .replies import (
    cancel_refused_text,
    cancelled_text,
    return_refused_text,
    return_started_text,
    status_text,
)

Events = list[dict[str, Any]]


def _asked_for_order(dispatcher: CollectingDispatcher, tracker: Tracker) -> Any:
    """The ``order_id`` slot; when it is empty, ask for it and return None."""
    order_id = tracker.get_slot("order_id")
    if order_id in (None, ""):
        dispatcher.utter_message(response="utter_ask_order_id")
        return None
    return order_id


def _not_found(dispatcher: CollectingDispatcher, order_id: Any) -> Events:
    dispatcher.utter_message(response="utter_order_not_found", order_id=str(order_id))
    return [SlotSet("order_id", None)]


class ActionOrderStatus(Action):
    """Tell the customer where an order is: status, carrier and tracking, dates, items."""

    def name(self) -> str:
        return "action_order_status"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: DomainDict) -> Events:
        order_id = _asked_for_order(dispatcher, tracker)
        if order_id is None:
            return []
        async with OrderBook.from_env() as book:
            order = await book.get(order_id)
        if order is None:
            return _not_found(dispatcher, order_id)
        dispatcher.utter_message(text=status_text(order))
        # Keep the number, in its canonical form, for a follow-up ("cancel it, please").
        return [SlotSet("order_id", order["id"])]


class ActionCancelOrder(Action):
    """Cancel an order that has not shipped; otherwise say why it can't be cancelled."""

    def name(self) -> str:
        return "action_cancel_order"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: DomainDict) -> Events:
        order_id = _asked_for_order(dispatcher, tracker)
        if order_id is None:
            return []
        async with OrderBook.from_env() as book:
            change = await book.cancel(order_id)
        if change.order is None:
            return _not_found(dispatcher, order_id)
        if change.done:
            dispatcher.utter_message(text=cancelled_text(change.order))
        elif text := cancel_refused_text(change.order, change.refusal or ""):
            dispatcher.utter_message(text=text)
        else:
            dispatcher.utter_message(response="utter_cancel_not_possible", order_id=change.order["id"])
        return [SlotSet("order_id", None)]


class ActionStartReturn(Action):
    """Start a return of a delivered order within 30 days, and say what happens next."""

    def name(self) -> str:
        return "action_start_return"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: DomainDict) -> Events:
        order_id = _asked_for_order(dispatcher, tracker)
        if order_id is None:
            return []
        reason = tracker.get_slot("return_reason")
        async with OrderBook.from_env() as book:
            change = await book.start_return(order_id, reason if isinstance(reason, str) else None)
        if change.order is None:
            return _not_found(dispatcher, order_id) + [SlotSet("return_reason", None)]
        if change.done:
            dispatcher.utter_message(text=return_started_text(change.order))
        else:
            dispatcher.utter_message(text=return_refused_text(change.order, change.refusal or ""))
        return [SlotSet("order_id", None), SlotSet("return_reason", None)]
