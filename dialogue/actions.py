"""Custom actions: the contract between the dialogue engine and whoever runs them.

The engine decides *that* an action runs and builds the Rasa tracker and domain
it sees; an :class:`ActionRunner` (in ``bot/``: rasa_sdk's executor in-process,
or an action server over Rasa's webhook protocol) runs it and hands back what
rasa-sdk returns — ``events`` (Rasa event dicts such as ``{"event": "slot",
"name": ..., "value": ...}``) and ``responses`` (dispatcher messages). The engine
applies the events to the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.errors import DeskmateError


@dataclass(frozen=True)
class ActionResult:
    """What an action returned, in rasa-sdk's wire form."""

    events: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)


class ActionError(DeskmateError):
    """An action could not run.

    ``kind`` is one of:
    - ``"rejected"``: the action refused to run (rasa-sdk ``ActionExecutionRejection``,
      HTTP 400); as in Rasa, the engine lets the next policy answer;
    - ``"unknown"``: no such action is registered (HTTP 404);
    - ``"unavailable"``: the action server is down or timed out;
    - ``"failed"``: the action raised, or answered something that is not rasa-sdk's format.
    """

    def __init__(self, action: str, kind: str, message: str) -> None:
        super().__init__(f"action {action!r} {kind}: {message}")
        self.action = action
        self.kind = kind
        self.message = message


class ActionRunner(Protocol):
    """Runs a custom action by name against a Rasa tracker and domain (both JSON dicts)."""

    async def run(self, name: str, tracker: dict[str, Any], domain: dict[str, Any]) -> ActionResult:
        """Raise :class:`ActionError` when the action cannot run."""
        ...

    def names(self) -> set[str] | None:
        """The action names this runner knows, or None when it cannot tell (remote)."""
        ...
