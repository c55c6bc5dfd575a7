"""``deskmate validate``: every problem of a bot project, with file and line.

Loading (``dialogue.project``) stops at the first file it cannot read; this
module goes on and collects everything a bot developer should fix: intents used
but not declared, actions and responses that do not exist, forms that cannot
ask for a slot, slot mappings on undeclared entities, bad thresholds, knowledge
and catalog files that do not load, unknown keys (warnings).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ProjectError
from dialogue.project import SLOT_TYPES, Project, Rule, base_intent, compose_yaml, load_project, parse_yaml

BUILTIN_ACTIONS = {"action_listen", "action_restart", "action_default_fallback", "action_deactivate_loop",
                   "action_handoff", "action_human_handoff", "action_recommend_products", "action_back",
                   "action_session_start", "action_two_stage_fallback", "action_unlikely_intent"}
MAPPING_TYPES = {"from_entity", "from_text", "from_intent", "from_trigger_intent", "custom"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class _Lines:
    """Line numbers of keys and list items in a YAML file (1-based), by path."""

    def __init__(self, path: Path) -> None:
        try:
            self.root: yaml.Node | None = compose_yaml(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError):
            self.root = None

    def line(self, *path: str | int) -> int | None:
        node, line = self.root, None
        for step in path:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == step), None)
                if match is None:
                    return line
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def find(self, value: str) -> int | None:
        """First line where a scalar equal to ``value`` appears."""
        stack = [self.root] if self.root is not None else []
        best: int | None = None
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode) and node.value == value:
                line = node.start_mark.line + 1
                best = line if best is None else min(best, line)
            elif isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    stack.extend([k, v])
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
        return best


def validate(root: Path | str) -> list[Problem]:
    """All problems of the project at ``root``; an empty list means it is ready."""
    root = Path(root)
    try:
        project = load_project(root)
    except ProjectError as exc:
        return [Problem(exc.path, exc.line, exc.message)]
    problems = [Problem(_file_of(w, root), None, w.split(": ", 1)[-1], "warning") for w in project.warnings]
    problems += _domain(project)
    problems += _data(project)
    problems += _config(project)
    problems += _resources(project)
    return sorted(problems, key=lambda p: (p.severity != "error", p.file, p.line or 0))


def _file_of(message: str, root: Path) -> str:
    head = message.split(": ", 1)[0]
    return head if head.endswith((".yml", ".yaml", ".json")) else str(root)


class DomainLines:
    """Where a domain entry is written: ``domain.yml``, or the file of ``domain/`` that has it."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.main = project.domain_files[0] if project.domain_files else project.path / "domain.yml"
        self.files: dict[Path, _Lines] = {}

    def lines_of(self, path: Path) -> _Lines:
        if path not in self.files:
            self.files[path] = _Lines(path)
        return self.files[path]

    def at(self, section: str, name: str, *rest: str | int) -> tuple[str, int | None]:
        path = self.project.defined_in.get((section, name), self.main)
        return str(path), self.lines_of(path).line(section, name, *rest)

    def find(self, value: str) -> tuple[str, int | None]:
        for path in self.project.domain_files:
            line = self.lines_of(path).find(value)
            if line is not None:
                return str(path), line
        return str(self.main), None


def _domain(project: Project) -> list[Problem]:
    entries, out = DomainLines(project), []
    for name, spec in project.slots.items():
        file, _ = entries.at("slots", name)
        lines = entries.lines_of(Path(file))
        kind = spec.get("type")
        if kind not in SLOT_TYPES:
            out.append(Problem(file, lines.line("slots", name), f"slot {name!r}: unknown type {kind!r} "
                               f"(one of {', '.join(sorted(SLOT_TYPES))})"))
        if kind == "categorical" and not spec.get("values"):
            out.append(Problem(file, lines.line("slots", name), f"categorical slot {name!r} has no values"))
        for i, mapping in enumerate(spec.get("mappings") or []):
            where = lines.line("slots", name, "mappings", i)
            mtype = mapping.get("type") if isinstance(mapping, dict) else None
            if mtype not in MAPPING_TYPES:
                out.append(Problem(file, where, f"slot {name!r}: unknown mapping type {mtype!r}"))
            elif mtype == "from_entity" and mapping.get("entity") not in project.entities:
                out.append(Problem(file, where, f"slot {name!r} maps from entity {mapping.get('entity')!r}, "
                                   "which is not listed under entities"))
            for cond in mapping.get("conditions") or [] if isinstance(mapping, dict) else []:
                loop = cond.get("active_loop") if isinstance(cond, dict) else None
                if loop and loop not in project.forms:
                    out.append(Problem(file, where, f"slot {name!r}: condition on unknown form {loop!r}"))
    for form, required in project.forms.items():
        file, _ = entries.at("forms", form)
        lines = entries.lines_of(Path(file))
        for slot in required:
            if slot not in project.slots:
                out.append(Problem(file, lines.line("forms", form), f"form {form!r} requires slot {slot!r}, "
                                   "which is not declared under slots"))
            asks = (f"utter_ask_{form}_{slot}", f"utter_ask_{slot}", f"action_ask_{form}_{slot}",
                    f"action_ask_{slot}")
            if not any(a in project.responses or a in project.actions for a in asks):
                out.append(Problem(file, lines.line("forms", form), f"form {form!r} cannot ask for {slot!r}: "
                                   f"add a response utter_ask_{slot}", "warning"))
    for name, variations in project.responses.items():
        file, _ = entries.at("responses", name)
        lines = entries.lines_of(Path(file))
        for i, variation in enumerate(variations):
            has_content = any(variation.get(k) for k in ("text", "buttons", "image", "custom", "attachment"))
            if not has_content:
                out.append(Problem(file, lines.line("responses", name, i),
                                   f"response {name!r} variation {i + 1} has no text, buttons, image "
                                   "or custom"))
            for b in variation.get("buttons") or []:
                if not isinstance(b, dict) or "payload" not in b or "title" not in b:
                    out.append(Problem(file, lines.line("responses", name, i),
                                       f"response {name!r}: each button needs a title and a payload"))
                    break
    if "utter_default" not in project.responses:
        file, lines = str(entries.main), entries.lines_of(entries.main)
        out.append(Problem(file, lines.line("responses"), "no utter_default response: the bot will use a "
                           "built-in 'not sure' text when it does not understand", "warning"))
    return out


def _known_action(project: Project, name: str) -> bool:
    return (name in project.responses or name in project.forms or name in project.actions
            or name in BUILTIN_ACTIONS or bool(project.retrieval_responses(name)))


def _data(project: Project) -> list[Problem]:
    out: list[Problem] = []
    intents = set(project.intents)
    for path in project.data_files:
        lines = _Lines(path)
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
        for i, item in enumerate(data.get("nlu") or []):
            # chitchat/ask_name is an answer of the retrieval intent chitchat, which the domain lists.
            if isinstance(item, dict) and base_intent(str(item.get("intent", ""))) not in intents | {""}:
                out.append(Problem(str(path), lines.line("nlu", i), f"intent {item['intent']!r} has examples "
                                   "but is not listed in domain.yml"))
        for i, rule in enumerate(data.get("rules") or []):
            if not isinstance(rule, dict):
                continue
            name = rule.get("rule")
            for j, cond in enumerate(rule.get("condition") or []):
                if not isinstance(cond, dict):
                    continue
                where = lines.line("rules", i, "condition", j)
                loop = cond.get("active_loop")
                if loop and loop not in project.forms:
                    out.append(Problem(str(path), where,
                                       f"rule {name!r}: condition on unknown form {loop!r}"))
                for slot in _slot_names(cond.get("slot_was_set")):
                    if slot not in project.slots and slot != "requested_slot":
                        out.append(Problem(str(path), where, f"rule {name!r}: condition on slot {slot!r}, "
                                           "which is not declared under slots"))
            for j, step in enumerate(rule.get("steps") or []):
                where = lines.line("rules", i, "steps", j)
                if not isinstance(step, dict):
                    continue
                for alternative in [step, *[s for s in step.get("or") or [] if isinstance(s, dict)]]:
                    intent = alternative.get("intent")
                    if intent and base_intent(str(intent)) not in intents and intent != "nlu_fallback":
                        out.append(Problem(str(path), where, f"rule {name!r}: intent {intent!r} "
                                           "is not listed in domain.yml"))
                action = step.get("action")
                if action and not _known_action(project, str(action)):
                    out.append(Problem(str(path), where, f"rule {name!r}: action {action!r} is "
                                       "neither a response, a form nor an action in domain.yml"))
    out += _contradictions(project)
    where_intent = DomainLines(project)
    for intent in project.intents:
        n = sum(len(texts) for name, texts in project.examples.items() if base_intent(name) == intent)
        if n < 2:
            file, line = where_intent.find(intent)
            out.append(Problem(file, line,
                               f"intent {intent!r} has {n} training example(s); the classifier needs a few",
                               "warning"))
    return out


def _slot_names(items: Any) -> list[str]:
    items = items if isinstance(items, list) else [items] if items else []
    return [str(k) for item in items for k in (item if isinstance(item, dict) else [item])]


def _contradictions(project: Project) -> list[Problem]:
    """Rules that match the same turn equally well but do different things: Rasa refuses
    to train them; here the first written would win without a word."""
    out: list[Problem] = []
    seen: dict[tuple[object, ...], Rule] = {}
    for rule in project.rule_list:
        key = (rule.intent, rule.after, rule.active_loop, rule.no_loop, rule.conversation_start,
               rule.earlier, tuple(sorted((n, repr(v)) for n, v in rule.slots)))
        first = seen.setdefault(key, rule)
        shorter, longer = sorted((first.actions, rule.actions), key=len)
        # One going on where the other stops is Rasa's slot_was_set-after-an-action branch
        # (warned about when loading), not a contradiction.
        if first is not rule and longer[:len(shorter)] != shorter:
            line = _Lines(Path(rule.file)).find(rule.name) if rule.file else None
            out.append(Problem(rule.file or str(project.path), line,
                               f"rules {first.name!r} and {rule.name!r} contradict each other: the same "
                               f"turn runs {list(first.actions)} or {list(rule.actions)}; add a "
                               "condition that tells them apart"))
    return out


def _config(project: Project) -> list[Problem]:
    path = project.path / "config.yml"
    if not path.is_file():
        return []
    lines, out, file = _Lines(path), [], str(path)
    for key, value in (project.config.get("thresholds") or {}).items():
        if not isinstance(value, int | float) or not 0 <= float(value) <= 1:
            out.append(Problem(file, lines.line("thresholds", key),
                               f"thresholds.{key} must be between 0 and 1"))
    for key in ("negative_turns", "low_confidence_turns"):
        value = (project.config.get("handoff") or {}).get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            out.append(Problem(file, lines.line("handoff", key),
                               f"handoff.{key} must be a whole number >= 0"))
    for intent in (project.config.get("handoff") or {}).get("on_intents") or []:
        if intent not in project.intents:
            out.append(Problem(file, lines.line("handoff", "on_intents"),
                               f"handoff.on_intents: {intent!r} is not an intent of the domain"))
    backend = (project.config.get("language_model") or {}).get("backend", "embedded")
    if backend not in ("embedded", "remote", "none"):
        out.append(Problem(file, lines.line("language_model", "backend"),
                           f"language_model.backend must be embedded, remote or none, not {backend!r}"))
    for intent in (project.config.get("generative") or {}).get("intents") or []:
        if intent not in project.intents:
            out.append(Problem(file, lines.line("generative", "intents"),
                               f"generative.intents: {intent!r} is not an intent of the domain"))
    return out


def _resources(project: Project) -> list[Problem]:
    out: list[Problem] = []
    loaders: list[tuple[Path, Any]] = []
    from dialogue.entities import EntityExtractor
    from dialogue.knowledge import load_knowledge
    from dialogue.recommend import load_catalog

    if project.knowledge_dir.is_dir():
        loaders.append((project.knowledge_dir, load_knowledge))
    if project.catalog_path.is_file():
        loaders.append((project.catalog_path, load_catalog))
    for path, load in loaders:
        try:
            load(path)
        except ProjectError as exc:
            out.append(Problem(exc.path, exc.line, exc.message))
    try:
        EntityExtractor.for_project(project)
    except ProjectError as exc:
        out.append(Problem(exc.path, exc.line, exc.message))
    return out


def report(problems: Sequence[Problem]) -> Iterable[str]:
    for problem in problems:
        yield str(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    yield f"{errors} error(s), {warnings} warning(s)"
