"""A bot project on disk, in Rasa 3's file formats.

``domain.yml`` (intents, responses, slots), ``data/*.yml`` (NLU examples and
rules) and ``config.yml`` (deskmate's own settings). Reading the project
happens once at start-up; everything after works on the loaded value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ProjectError
from dialogue.rasa_nlu import section_examples

log = logging.getLogger("deskmate.project")

@dataclass
class Project:
    """A loaded bot project."""

    path: Path
    intents: list[str] = field(default_factory=list)
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    forms: dict[str, list[str]] = field(default_factory=dict)  # form -> required slots
    actions: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)  # intent -> texts
    rules: dict[str, list[str]] = field(default_factory=dict)  # intent -> actions, in order
    config: dict[str, Any] = field(default_factory=dict)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ProjectError(str(path), f"invalid YAML: {exc}", None if line is None else line + 1) from exc
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProjectError(str(path), "expected a mapping at the top level")
    return data


def _load_domain(project: Project, path: Path) -> None:
    domain = _read_yaml(path)
    for item in domain.get("intents") or []:
        # Rasa allows "- greet" and "- greet: {use_entities: []}".
        name = next(iter(item)) if isinstance(item, dict) else str(item)
        project.intents.append(name)
    for name, variations in (domain.get("responses") or {}).items():
        if not isinstance(variations, list) or not variations:
            raise ProjectError(str(path), f"response {name!r} needs a list of variations")
        project.responses[name] = [v if isinstance(v, dict) else {"text": str(v)} for v in variations]
    project.slots = dict(domain.get("slots") or {})
    for form, spec in (domain.get("forms") or {}).items():
        required = (spec or {}).get("required_slots") or []
        project.forms[str(form)] = [str(x) for x in required]
    project.actions = [str(a) for a in domain.get("actions") or []]


def _load_data(project: Project, path: Path) -> None:
    data = _read_yaml(path)
    for item in data.get("nlu") or []:
        if isinstance(item, dict) and "intent" in item:
            project.examples.setdefault(str(item["intent"]), []).extend(
                section_examples(str(path), item))
        # synonym / regex / lookup sections carry no intent examples.
    for rule in data.get("rules") or []:
        steps = rule.get("steps") or []
        intent = next((s["intent"] for s in steps if isinstance(s, dict) and "intent" in s), None)
        actions = [s["action"] for s in steps if isinstance(s, dict) and "action" in s]
        if intent and actions:
            project.rules.setdefault(str(intent), actions)


def load_project(path: Path | str) -> Project:
    """Load the project at ``path``; raise :class:`ProjectError` naming the bad file."""
    root = Path(path)
    domain = root / "domain.yml"
    if not domain.is_file():
        raise ProjectError(str(root), "not a bot project: domain.yml is missing "
                           "(point --project / DESKMATE_PROJECT at a project directory)")
    project = Project(path=root)
    _load_domain(project, domain)
    data_dir = root / "data"
    if data_dir.is_dir():
        for file in sorted(data_dir.rglob("*.yml")) + sorted(data_dir.rglob("*.yaml")):
            _load_data(project, file)
    config = root / "config.yml"
    if config.is_file():
        project.config = _read_yaml(config)
    for intent, actions in project.rules.items():
        for action in actions:
            if action.startswith("utter_") and action not in project.responses:
                log.warning("%s: rule for %r uses unknown response %r", root, intent, action)
    return project
