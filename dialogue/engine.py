"""The turn pipeline: classify → active form → rules → knowledge → generative reply → handoff.

:class:`DialogueEngine` answers one customer turn from what ``bot`` hands it —
the conversation (slots, dialogue state, history, profile), the message with the
classifier's reading and embedding — and the parts it was built with (entity
extractor, knowledge index, recommender, action runner, language model). It
does no network, Redis or model I/O of its own; it yields replies, slot
changes, the new dialogue state, a handoff, and a :class:`TurnAnalysis` saying
which policy answered and why.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dialogue.actions import ActionError, ActionRunner
from dialogue.entities import EntityExtractor
from dialogue.generate import GenerationReport, Writer
from dialogue.knowledge import Hit, KnowledgeIndex
from dialogue.picks import RECOMMEND, Picks
from dialogue.project import Project, Rule, base_intent
from dialogue.recommend import Recommender
from dialogue.responses import Responses
from dialogue.rules import RuleBook
from dialogue.simple import ExampleMatcher, read_payload
from dialogue.slots import fill_slots
from dialogue.tracker import TurnState, apply_events, tracker_state
from dialogue.types import (
    Button,
    Conversation,
    Handoff,
    Output,
    Reply,
    SlotSet,
    StateUpdate,
    StreamedReply,
    TurnAnalysis,
    UserMessage,
)

log = logging.getLogger("deskmate.engine")

OUT_OF_SCOPE = "out_of_scope"
FALLBACK = "utter_default"
HANDOFF = "utter_handoff"
NOT_SURE = ("I'm not sure about that, and I'd rather not guess. "
            "Shall I connect you with a colleague from our support team?")
HANDOFF_TEXT = "I'm handing this conversation to a colleague from our support team. Please stay in this chat."
ACTION_DOWN = "Sorry, I can't do that right now. Please try again in a few minutes, or ask for a colleague."
# Intents that answer a question the form asked rather than change the subject.
FORM_ANSWERS = {"affirm", "inform", OUT_OF_SCOPE, "nlu_fallback"}
STOP_FORM = {"deny", "stop"}
MAX_FOLLOWUPS = 5


@dataclass(frozen=True)
class Understanding:
    intent: str
    confidence: float
    ranking: list[dict[str, Any]]
    entities: list[dict[str, Any]]
    sentiment: str | None
    sentiment_score: float | None
    why: str
    unclear: bool  # below the confidence threshold, or out of scope
    guess: str | None = None  # the best intent when it was below the threshold


@dataclass
class Decision:
    policy: str = "none"
    reason: str = ""
    sources: list[dict[str, str]] = field(default_factory=list)
    streamed: StreamedReply | None = None
    report: GenerationReport | None = None
    rule_actions: list[str] | None = None  # what the rule that answered ran, for multi-turn rules


class DialogueEngine:
    """Answers customer turns for one bot project (implements ``dialogue.types.Pipeline``)."""

    def __init__(self, project: Project, *, entities: EntityExtractor | None = None,
                 knowledge: KnowledgeIndex | None = None, recommender: Recommender | None = None,
                 actions: ActionRunner | None = None, writer: Writer | None = None,
                 response_vectors: Mapping[str, Any] | None = None) -> None:
        self.project = project
        self.responses = Responses(project.responses)
        self.entities = entities
        self.knowledge = knowledge
        self.recommender = recommender
        self.picks = Picks(recommender, self.responses) if recommender is not None else None
        self.actions = actions
        self.writer = writer
        # response name -> (variations, D) unit vectors of its texts, to compare with knowledge
        self.response_vectors = dict(response_vectors or {})
        self.matcher = ExampleMatcher(project.examples)
        cfg = project.config
        self.intent_threshold = float(project.setting("thresholds", "intent", 0.5))
        self.knowledge_threshold = float(project.setting("thresholds", "knowledge", 0.55))
        self.evidence_threshold = float(project.setting("thresholds", "evidence", 0.35))
        # A knowledge entry this close to the question is more specific than a rule's canned
        # answer ("can I return sale items?" vs the general return policy): it answers instead.
        self.override_margin = float(project.setting("thresholds", "knowledge_margin", 0.15))
        self.negative_score = float(project.setting("handoff", "negative_score", -0.6))
        self.negative_turns = int(project.setting("handoff", "negative_turns", 2))
        self.unclear_turns = int(project.setting("handoff", "low_confidence_turns", 2))
        self.handoff_intents = set(project.setting("handoff", "on_intents", ["contact_human_agent"]))
        generative = cfg.get("generative") or {}
        self.generative_intents = set(generative.get("intents") or [])
        self.knowledge_glue = bool(generative.get("knowledge_glue", False))
        self.initial_slots = {name: spec.get("initial_value") for name, spec in project.slots.items()}
        self.domain_actions = set(project.actions)
        # Intents that start a task (a form or a custom action): their wording is not mood.
        self.task_intents = {r.intent for r in project.rule_list
                             if r.intent and any(not a.startswith("utter_") for a in r.actions)}
        self.rules = RuleBook(project)

    # -- understanding --------------------------------------------------------

    def understand(self, message: UserMessage) -> Understanding:
        entities = [e.to_rasa() for e in self.entities.extract(message.text)] if self.entities else []
        nlu = message.nlu or {}
        sentiment, score = nlu.get("sentiment"), nlu.get("sentiment_score")
        if message.payload:
            parsed = read_payload(message.payload)
            if parsed:
                ranking = [{"intent": parsed.intent, "confidence": parsed.confidence}]
                return Understanding(parsed.intent, parsed.confidence, ranking, parsed.entities,
                                     None, None, "button payload", False)
        if nlu.get("intent"):
            intent, confidence = str(nlu["intent"]), float(nlu.get("confidence") or 0.0)
            ranking = list(nlu.get("ranking") or [])
            why = f"classifier {intent} {confidence:.2f}"
        else:
            best, confidence = self.matcher.match(message.text)
            intent = best or OUT_OF_SCOPE
            ranking = [{"intent": intent, "confidence": confidence}]
            why = f"example match {intent} {confidence:.2f}"
        unclear = intent == OUT_OF_SCOPE or confidence < self.intent_threshold
        guess = None
        if unclear and intent != OUT_OF_SCOPE:
            # Rasa's nlu_fallback: too unsure to act on the best guess.
            why += f" < threshold {self.intent_threshold}"
            intent, guess = OUT_OF_SCOPE, intent
        return Understanding(intent, confidence, ranking, entities, sentiment, score, why, unclear, guess)

    # -- the turn ---------------------------------------------------------------

    async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        u = self.understand(message)
        # Every domain slot, at its initial value until something sets it (as in Rasa).
        turn = TurnState(slots={**self.initial_slots, **conversation.slots}, state=dict(conversation.state))
        hits = self._retrieve(message)
        decision = Decision()
        loop_before, requested = turn.active_loop, turn.state.get("requested_slot")
        # The form the rule for this intent starts: Rasa reads the mappings again with it active.
        rule = None if u.unclear else self.match_rule(u, turn, conversation)
        starting = next((a for a in rule.actions if a in self.project.forms), None) if rule else None
        found = fill_slots(self.project.slots, text=message.text, intent=u.intent, entities=u.entities,
                           active_loop=loop_before, requested=requested,
                           forms=self.project.domain.get("forms"), starting=starting)
        if (loop_before and requested in found and found[requested][1] == "from_text"
                and self._leaves_form(u, loop_before) == "stop"):
            # Any text fills a free-text slot, but "no, never mind" is not the answer. Other
            # intents are ("wrong size" as a return reason), as in Rasa; a project excludes
            # them with the mapping's `not_intent`.
            del found[requested]
        filled = {name: value for name, (value, _) in found.items()}
        for name, value in filled.items():
            turn.set_slot(name, value)

        answered = False
        if not u.unclear and u.intent in self.handoff_intents:
            await self._run_rules(conversation, message, u, turn, decision)
            turn.handoff = turn.handoff or f"the customer asked ({u.intent})"
            decision.policy, decision.reason = "handoff", f"intent {u.intent} hands over"
            answered = True
        elif loop_before:
            answered = await self._continue_form(conversation, message, u, turn, decision, filled)
        if not answered and not u.unclear and self._knowledge_overrides(
                u, message, hits, self._rule_actions(u, turn, conversation)):
            answered = self._answer_from_knowledge(conversation, message, u, hits, turn, decision)
        if not answered and not u.unclear:
            answered = await self._run_rules(conversation, message, u, turn, decision)
        if not answered:
            answered = self._answer_from_knowledge(conversation, message, u, hits, turn, decision)
        if not answered and not u.unclear and self.writer is not None:
            answered = self._generate(conversation, message, u, hits, turn, decision, fallback=None)
        if not answered:
            self._fallback(u, message, turn, decision)

        self._track_streaks(u, turn, decision)
        if turn.handoff and not any(r.name == HANDOFF for r in turn.replies) and decision.streamed is None:
            reply = self.responses.render(HANDOFF, turn.slots, message.event_id)
            turn.replies.append(reply or Reply(HANDOFF_TEXT, name=HANDOFF))
            turn.actions.append(HANDOFF)
        if self.picks is not None and not turn.handoff:
            Picks.offer(conversation, u.intent, turn.replies)
        self.rules.remember(turn, u.intent, decision.rule_actions)

        for name, value in turn.slot_events:
            yield SlotSet(name, value)
        for reply in turn.replies:
            yield reply
        if decision.streamed is not None:
            yield decision.streamed  # consumed by bot before the analysis below is read
            report = decision.report
            if report is not None:
                if report.blocked:
                    decision.reason += f"; blocked unsupported facts {report.blocked}"
                if report.error:
                    decision.reason += f"; {report.error}"
                if report.fell_back:
                    decision.policy += "+fallback"
        yield StateUpdate(turn.state)
        if turn.handoff:
            yield Handoff(turn.handoff)
        yield TurnAnalysis(
            intent=u.intent, confidence=round(u.confidence, 4), policy=decision.policy,
            reason=f"{u.why}; {decision.reason}".strip("; "), sentiment=u.sentiment,
            sentiment_score=u.sentiment_score, sources=[s["source"] for s in decision.sources],
            actions=list(turn.actions), entities=u.entities)

    # -- policies -------------------------------------------------------------

    async def _run_rules(self, conversation: Conversation, message: UserMessage, u: Understanding,
                         turn: TurnState, decision: Decision) -> bool:
        rule = self.match_rule(u, turn, conversation)
        generative = u.intent in self.generative_intents or base_intent(u.intent) in self.generative_intents
        if rule is None and generative:
            return False
        if generative and self.writer is not None:
            return False  # the language model answers these; the rule is its fallback
        return await self._apply_rule(rule, conversation, message, u, turn, decision)

    async def _apply_rule(self, rule: Rule | None, conversation: Conversation, message: UserMessage,
                          u: Understanding, turn: TurnState, decision: Decision) -> bool:
        """Run ``rule``'s actions (or the intent's own ``utter_<intent>`` when no rule matched);
        False when there is nothing to run or an action was rejected."""
        if rule is None:
            guess = f"utter_{u.intent}"
            if guess not in self.responses:
                return False
            actions = [guess]
        else:
            actions = list(rule.actions)
        named = f" ({rule.name})" if rule is not None and rule.name else ""
        decision.policy, decision.reason = "rules", f"rule for {u.intent}{named}"
        for action in actions:
            if not await self._run_action(action, conversation, message, u, turn, decision):
                return False
        decision.rule_actions = actions
        if rule is not None and not rule.wait_for_user_input:
            await self._run_after(rule, conversation, message, u, turn, decision)
        return True

    async def _run_after(self, rule: Rule, conversation: Conversation, message: UserMessage,
                         u: Understanding, turn: TurnState, decision: Decision, depth: int = 0) -> None:
        """A rule with ``wait_for_user_input: false`` goes on with the rule that starts with
        its last action, as Rasa's RulePolicy predicts it instead of listening."""
        last = rule.actions[-1] if rule.actions else None
        follow = self.rules.after(last, turn, conversation)
        if follow is None:
            return
        if depth >= MAX_FOLLOWUPS:
            log.warning("session %s: rules continue each other too long at %s", conversation.session_id, last)
            return
        for action in follow.actions:
            if not await self._run_action(action, conversation, message, u, turn, decision):
                return
        if not follow.wait_for_user_input:
            await self._run_after(follow, conversation, message, u, turn, decision, depth + 1)

    def match_rule(self, u: Understanding, turn: TurnState, conversation: Conversation) -> Rule | None:
        """The rule that answers this turn's intent, if one does (see :class:`RuleBook`)."""
        return self.rules.match(u.intent, turn, conversation)

    def _rule_actions(self, u: Understanding, turn: TurnState, conversation: Conversation) -> list[str]:
        rule = None if u.unclear else self.match_rule(u, turn, conversation)
        return list(rule.actions) if rule is not None else []

    async def _continue_form(self, conversation: Conversation, message: UserMessage, u: Understanding,
                             turn: TurnState, decision: Decision, filled: Mapping[str, Any]) -> bool:
        form = turn.active_loop
        assert form is not None
        requested = turn.state.get("requested_slot")
        if requested and requested in filled:
            decision.policy, decision.reason = "form", f"{form}: got {requested}"
            await self._form_step(form, conversation, message, u, turn, decision)
            return True
        rule = None if u.unclear else self.match_rule(u, turn, conversation)
        if rule is not None and rule.active_loop == form:
            # A rule for this form's unhappy path (a question in the middle of the form, a
            # "stop" that asks whether to go on): it answers, and the form asks again when
            # the rule runs it, as in Rasa. It comes before deciding the customer left.
            if await self._apply_rule(rule, conversation, message, u, turn, decision):
                return True
        leaves = self._leaves_form(u, form)
        if leaves == "stop":
            self._deactivate(turn)
            decision.policy, decision.reason = "form", f"{form}: stopped by the customer"
            turn.actions.append("action_deactivate_loop")
            reply = self.responses.render("utter_deny", turn.slots, message.event_id)
            if reply:
                turn.replies.append(reply)
                turn.actions.append("utter_deny")
            return True
        if leaves == "switch":
            # The customer changed the subject: leave the form, answer the new request.
            self._deactivate(turn)
            turn.actions.append("action_deactivate_loop")
            return False
        decision.policy, decision.reason = "form", f"{form}: asking again for {requested}"
        await self._form_step(form, conversation, message, u, turn, decision)
        return True

    def _leaves_form(self, u: Understanding, form: str) -> str | None:
        """"stop" for a confident no, "switch" for a confident request of another kind
        (changing one's mind), None for anything that may answer the form's question."""
        if u.unclear:
            return None
        if u.intent in STOP_FORM:
            return "stop"
        triggers = {r.intent for r in self.project.rule_list if r.intent and form in r.actions}
        if u.intent not in FORM_ANSWERS and not {u.intent, base_intent(u.intent)} & triggers:
            return "switch"
        return None

    async def _form_step(self, form: str, conversation: Conversation, message: UserMessage,
                         u: Understanding, turn: TurnState, decision: Decision, *,
                         activate: bool = False, depth: int = 0) -> None:
        """Validate, then ask for the next missing slot or submit the completed form."""
        turn.state["active_loop"] = form
        chose = False  # the validator set requested_slot
        validator = f"validate_{form}"
        if validator in self.domain_actions or (self.actions and validator in (self.actions.names() or ())):
            # What Rasa's form hands its validator: the slots set since the customer spoke
            # and, when the form starts, the required slots that were filled before.
            required = self.project.forms.get(form, [])
            candidates = {name: turn.slots.get(name) for name, _ in turn.slot_events
                          if name in required or name == turn.state.get("requested_slot")}
            if activate:
                candidates = {**{s: turn.slots[s] for s in required if turn.slots.get(s) is not None},
                              **candidates}
            turn.requested_chosen = False
            await self._custom_action(validator, conversation, message, u, turn, decision, depth,
                                       candidates=candidates, latest_action=form)
            if turn.active_loop != form:  # the validator ended the form
                return
            chose = turn.requested_chosen
        missing = [s for s in self.project.forms.get(form, []) if turn.slots.get(s) is None]
        if chose:
            # The validator chose the next slot, one the domain's list may not have (its
            # required_slots), or None: the form is complete (as in Rasa).
            chosen = turn.state.get("requested_slot")
            missing = [chosen] if chosen else []
        if missing:
            slot = missing[0]
            turn.state["requested_slot"] = slot
            for ask in (f"utter_ask_{form}_{slot}", f"utter_ask_{slot}"):
                reply = self.responses.render(ask, turn.slots, message.event_id)
                if reply is not None:
                    turn.replies.append(reply)
                    turn.actions.append(ask)
                    return
            for ask in (f"action_ask_{form}_{slot}", f"action_ask_{slot}"):
                if ask in self.domain_actions:
                    await self._run_action(ask, conversation, message, u, turn, decision, depth)
                    return
            turn.replies.append(Reply(f"What is your {slot.replace('_', ' ')}?", name=f"ask_{slot}"))
            return
        self._deactivate(turn)
        decision.reason += f"; {form} complete"
        for action in self.project.submits.get(form, []):
            if not await self._run_action(action, conversation, message, u, turn, decision, depth):
                break

    def _deactivate(self, turn: TurnState) -> None:
        turn.state.pop("active_loop", None)
        turn.state.pop("requested_slot", None)

    async def _run_action(self, name: str, conversation: Conversation, message: UserMessage,
                          u: Understanding, turn: TurnState, decision: Decision, depth: int = 0) -> bool:
        """Run one action; False when it was rejected (the next policy should answer)."""
        if name == "action_listen":
            return True
        if name in self.project.forms:
            if turn.active_loop == name and name in turn.actions:
                return True  # an action already started it this turn, and it has asked
            turn.actions.append(name)
            await self._form_step(name, conversation, message, u, turn, decision,
                                  activate=turn.active_loop != name, depth=depth)
            return True
        retrieval = name.startswith("utter_") and name not in self.responses
        if retrieval and self.project.retrieval_responses(name):
            # A retrieval intent's answer (Rasa's ResponseSelector): utter_chitchat says
            # utter_chitchat/ask_name for the intent chitchat/ask_name. The action keeps its
            # name, as in Rasa's stories; the reply is named after the response it said.
            answer = f"utter_{u.intent}"
            if base_intent(u.intent) != name.removeprefix("utter_") or answer not in self.responses:
                decision.reason += f"; {name}: no response for {u.intent}"
                return False
            reply = self.responses.render(answer, turn.slots, message.event_id)
            if reply is not None:
                turn.replies.append(reply)
            turn.actions.append(name)
            return True
        if name.startswith("utter_") and name in self.responses:
            reply = self.responses.render(name, turn.slots, message.event_id)
            if reply is not None:
                turn.replies.append(reply)
            turn.actions.append(name)
            return True
        if name in ("action_handoff", "action_human_handoff"):
            turn.actions.append(name)
            turn.handoff = turn.handoff or "a rule handed over"
            return True
        if name == "action_restart":
            turn.actions.append(name)
            apply_events(turn, [{"event": "restart"}], initial_slots=self.initial_slots)
            return True
        if name == "action_deactivate_loop":
            turn.actions.append(name)
            self._deactivate(turn)
            return True
        if name == "action_default_fallback":
            self._fallback(u, message, turn, decision)
            return True
        if name == RECOMMEND and self.picks is not None and not (
                self.actions and RECOMMEND in (self.actions.names() or ())):
            turn.actions.append(name)
            turn.replies.append(self.picks.reply(conversation, turn.slots, message.text, u.entities,
                                                 button=bool(message.payload), event_id=message.event_id))
            return True
        return await self._custom_action(name, conversation, message, u, turn, decision, depth)

    async def _custom_action(self, name: str, conversation: Conversation, message: UserMessage,
                             u: Understanding, turn: TurnState, decision: Decision, depth: int, *,
                             candidates: Mapping[str, Any] | None = None,
                             latest_action: str | None = None) -> bool:
        if self.actions is None:
            log.warning("no action runner for %s (add an actions/ package or an action endpoint)", name)
            turn.replies.append(Reply(ACTION_DOWN, name=name))
            decision.reason += f"; {name}: no action server"
            return True
        # Rasa sends every domain slot, None when unset, and requested_slot where there are forms.
        slots = {**self.initial_slots, **turn.slots}
        if self.project.forms or turn.state.get("requested_slot"):
            slots["requested_slot"] = turn.state.get("requested_slot")
        loop_before = turn.active_loop
        tracker = tracker_state(
            sender_id=conversation.session_id, slots=slots, text=message.text, intent=u.intent,
            confidence=u.confidence, ranking=u.ranking, entities=u.entities,
            history=conversation.history, active_loop=loop_before,
            latest_action=latest_action or (turn.actions[-1] if turn.actions else "action_listen"),
            candidates=candidates)
        try:
            result = await self.actions.run(name, tracker, self.project.domain)
        except ActionError as exc:
            if exc.kind == "rejected":
                decision.reason += f"; {name} rejected"
                return False
            log.warning("session %s: %s", conversation.session_id, exc)
            turn.replies.append(Reply(ACTION_DOWN, name=name))
            turn.actions.append(name)
            decision.reason += f"; {name} {exc.kind}"
            return True
        turn.actions.append(name)
        replies_before = len(turn.replies)
        apply_events(turn, result.events, initial_slots=self.initial_slots)
        # As Rasa's RemoteAction: the dispatcher's messages first, then the BotUttered events
        # the action returned, in their order.
        bot_event_replies = turn.replies[replies_before:]
        del turn.replies[replies_before:]
        for response in result.responses:
            reply = self.responses.dispatcher_message(response, turn.slots, f"{message.event_id}:{name}")
            if reply is not None:
                turn.replies.append(Reply(reply.text, reply.buttons, reply.cards, name=reply.name or name))
        turn.replies.extend(Reply(r.text, r.buttons, r.cards, name=r.name or name) for r in bot_event_replies)
        if "requested_slot" in turn.slots:  # Rasa keeps it as a slot; here it is dialogue state
            turn.state["requested_slot"] = turn.slots.pop("requested_slot")
            turn.slot_events = [e for e in turn.slot_events if e[0] != "requested_slot"]
            turn.requested_chosen = True
        follow, turn.followup = turn.followup, None
        if follow is not None:
            if depth >= MAX_FOLLOWUPS:
                log.warning("session %s: follow-up chain too long at %s", conversation.session_id, follow)
            else:
                await self._run_action(follow, conversation, message, u, turn, decision, depth + 1)
        loop = turn.active_loop
        if loop and loop != loop_before and loop in self.project.forms and "requested_slot" not in turn.state:
            # The action started a form (ActiveLoop): as in Rasa, the form runs at once and
            # asks its first question.
            if depth >= MAX_FOLLOWUPS:
                log.warning("session %s: too many actions in a row to run %s", conversation.session_id, loop)
            else:
                turn.actions.append(loop)
                await self._form_step(loop, conversation, message, u, turn, decision,
                                      activate=True, depth=depth + 1)
        return True

    # -- knowledge, generation, fallback ------------------------------------------

    def _retrieve(self, message: UserMessage) -> list[Hit]:
        if self.knowledge is None or message.vector is None or message.payload:
            return []
        return self.knowledge.search(message.vector, k=3)

    def _knowledge_overrides(self, u: Understanding, message: UserMessage, hits: Sequence[Hit],
                             actions: Sequence[str]) -> bool:
        """Does a knowledge entry answer this question better than the intent's canned response?

        Yes when the entry is clearly closer to the question than the response is (by
        ``knowledge_margin``) and is not about the same thing as the response ("can I
        return sale items?": the sale-items entry, not the general return policy). Only
        a rule that just says a response gives way; forms and actions keep their turn."""
        if not hits or hits[0].score < self.knowledge_threshold or self.knowledge is None:
            return False
        if not actions or u.intent in self.handoff_intents:
            return False
        if not all(a.startswith("utter_") for a in actions):
            return False
        responses = [self.response_vectors.get(a) for a in actions]
        if any(r is None for r in responses):
            return False
        query = np.asarray(message.vector, dtype=np.float32)
        query = query / (np.linalg.norm(query) or 1.0)
        entry = self.knowledge.vector(hits[0].entry.id)
        closest = max(float((r @ query).max()) for r in responses if r is not None)
        same_topic = entry is not None and max(
            float((r @ entry).max()) for r in responses if r is not None) >= 0.8
        return hits[0].score - closest >= self.override_margin and not same_topic

    def _answer_from_knowledge(self, conversation: Conversation, message: UserMessage, u: Understanding,
                               hits: Sequence[Hit], turn: TurnState, decision: Decision) -> bool:
        if not hits or hits[0].score < self.knowledge_threshold:
            return False
        top = hits[0]
        source = {"id": top.entry.id, "title": top.entry.title, "source": top.entry.source}
        decision.policy = "knowledge"
        decision.reason = f"knowledge {top.entry.id} {top.score:.2f} >= {self.knowledge_threshold}"
        decision.sources = [source]
        turn.actions.append("action_knowledge_answer")
        if self.knowledge_glue and self.writer is not None:
            return self._generate(conversation, message, u, hits[:1], turn, decision, fallback=top.entry.text,
                                  instruction="Answer using only the facts given.", keep_policy=True)
        # The rule's buttons (e.g. "Start a return") still fit a question on the same topic.
        buttons = []
        for action in self._rule_actions(u, turn, conversation):
            canned = self.responses.render(action, turn.slots, message.event_id)
            buttons.extend(canned.buttons if canned else [])
        turn.replies.append(Reply(top.entry.text, buttons, name="action_knowledge_answer", sources=[source]))
        return True

    def _evidence(self, conversation: Conversation, hits: Sequence[Hit]) -> list[str]:
        evidence = [f"{h.entry.title}\n{h.entry.text}" for h in hits if h.score >= self.evidence_threshold]
        if self.recommender is not None:
            profile = conversation.profile
            ids = list(profile.get("viewed", []))[-5:] + list(profile.get("carted", []))
            for pid in ids:
                product = self.recommender.product(pid)
                if product is not None:
                    evidence.append(product.facts_text())
        return evidence

    def _generate(self, conversation: Conversation, message: UserMessage, u: Understanding,
                  hits: Sequence[Hit], turn: TurnState, decision: Decision, *, fallback: str | None,
                  instruction: str | None = None, keep_policy: bool = False) -> bool:
        assert self.writer is not None
        evidence = self._evidence(conversation, hits)
        if fallback is None:
            rule = self._rule_actions(u, turn, conversation) or [f"utter_{u.intent}"]
            reply = next((r for r in (self.responses.render(a, turn.slots, message.event_id)
                                      for a in rule if a.startswith("utter_")) if r), None)
            fallback = reply.text if reply else self._not_sure_text(message)
            if reply is not None:
                evidence.append(reply.text)
        messages = self.writer.messages(conversation.history, message.text,
                                        [e for e in evidence], instruction)
        report = GenerationReport()
        seed = zlib.crc32(message.event_id.encode())
        chunks = self.writer.stream(messages, evidence, fallback, report, seed=seed)
        decision.streamed = StreamedReply(chunks, name="action_generate", sources=decision.sources)
        decision.report = report
        if not keep_policy:
            decision.policy, decision.reason = "generative", f"language model for {u.intent}"
        turn.actions.append("action_generate")
        return True

    def _not_sure_text(self, message: UserMessage) -> str:
        reply = self.responses.render(FALLBACK, {}, message.event_id)
        return reply.text if reply else NOT_SURE

    def _fallback(self, u: Understanding, message: UserMessage, turn: TurnState, decision: Decision) -> None:
        decision.policy = "fallback"
        decision.reason = decision.reason or ("not understood and no knowledge entry matched"
                                              if u.unclear else f"nothing answers {u.intent}")
        name = FALLBACK
        if u.intent == OUT_OF_SCOPE and u.guess is None:  # nothing fits: the out-of-scope answer
            name = next((a for a in self.project.rules.get(OUT_OF_SCOPE, []) if a in self.responses),
                        FALLBACK)
        reply = self.responses.render(name, turn.slots, message.event_id)
        turn.replies.append(reply or Reply(NOT_SURE, [Button("Talk to a human", "/contact_human_agent")],
                                           name=FALLBACK))
        turn.actions.append(name)
        turn.state["unclear_streak"] = int(turn.state.get("unclear_streak", 0)) + 1

    def _track_streaks(self, u: Understanding, turn: TurnState, decision: Decision) -> None:
        if decision.policy != "fallback":
            turn.state["unclear_streak"] = 0
        # Mood, not task words: "cancel my order" or an order number reads as negative to a
        # sentiment model, so only clearly negative free-text turns count.
        upset = (u.sentiment == "negative" and (u.sentiment_score or 0.0) <= self.negative_score
                 and decision.policy != "form" and u.intent != "deny" and u.intent not in self.task_intents)
        negative = int(turn.state.get("negative_streak", 0)) + 1 if upset else 0
        turn.state["negative_streak"] = negative
        if not turn.handoff and self.negative_turns > 0 and negative >= self.negative_turns:
            turn.handoff = f"{negative} negative turns in a row"
        unclear = int(turn.state.get("unclear_streak", 0))
        if not turn.handoff and self.unclear_turns > 0 and unclear >= self.unclear_turns:
            turn.handoff = f"{unclear} turns in a row not understood"
        if turn.handoff:
            turn.state["negative_streak"] = turn.state["unclear_streak"] = 0
            self._deactivate(turn)
            decision.reason += f"; handoff: {turn.handoff}"
