"""Custom actions, written with rasa-sdk: they run unchanged in deskmate or under
``python -m rasa_sdk --actions actions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

ORDERS = json.loads((Path(__file__).resolve().parent.parent / "orders.json").read_text())


class ActionOrderStatus(Action):
    def name(self) -> str:
        return "action_order_status"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
            domain: dict[str, Any]) -> list[dict[str, Any]]:
        order_id = str(tracker.get_slot("order_id") or "").upper()
        status = ORDERS.get(order_id)
        if status is None:
            dispatcher.utter_message(text=f"I couldn't find order {order_id}. Please check the number.")
        else:
            dispatcher.utter_message(text=f"Order {order_id} is {status}.")
        return [SlotSet("order_id", None)]
