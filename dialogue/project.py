"""A bot project on disk, in Rasa 3's file formats.

``domain.yml`` (intents, entities, slots, forms, responses, actions, session
config), ``data/*.yml`` (NLU examples and rules), ``config.yml`` (deskmate's own
settings), ``knowledge/``, ``catalog.json`` and ``actions/``. Reading the project
happens once at start-up; everything after works on the loaded value. Keys this
loader does not know are reported in :attr:`Project.warnings` (and logged), never
fatal: a Rasa project loads unchanged wherever the feature exists here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ProjectError
from dialogue.rasa_nlu import section_examples

log = logging.getLogger("deskmate.project")

DOMAIN_KEYS = {"version", "intents", "entities", "slots", "responses", "actions", "forms",
               "session_config", "config", "e2e_actions"}
DATA_KEYS = {"version", "nlu", "rules", "stories", "responses"}
NLU_KEYS = {"intent", "examples", "metadata", "regex", "lookup", "synonym"}
CONFIG_KEYS = {"persona", "thresholds", "handoff", "language_model", "action_endpoint", "knowledge",
               "recommendations", "generative", "banned_words"}
# Rasa's own config.yml keys: accepted and ignored (deskmate has its own classifier and policies).
RASA_CONFIG_KEYS = {"recipe", "language", "pipeline", "policies", "assistant_id"}
SLOT_TYPES = {"text", "bool", "categorical", "float", "list", "any"}


@dataclass(frozen=True)
class Rule:
    """``intent`` (or, for a form-submit rule, the form that just completed) -> actions."""

    actions: list[str]
    intent: str | None = None
    active_loop: str | None = None  # condition: only while this form is active
    name: str = ""


@dataclass
class Project:
    """A loaded bot project."""

    path: Path
    domain: dict[str, Any] = field(default_factory=dict)  # as written, for rasa-sdk actions
    intents: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    forms: dict[str, list[str]] = field(default_factory=dict)  # form -> required slots
    actions: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)  # intent -> texts
    rules: dict[str, list[str]] = field(default_factory=dict)  # intent -> actions, in order
    submits: dict[str, list[str]] = field(default_factory=dict)  # form -> actions once it is done
    rule_list: list[Rule] = field(default_factory=list)
    session_config: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    @property
    def knowledge_dir(self) -> Path:
        return self.path / "knowledge"

    @property
    def catalog_path(self) -> Path:
        return self.path / "catalog.json"

    @property
    def actions_dir(self) -> Path:
        return self.path / "actions"

    def setting(self, section: str, key: str, default: Any) -> Any:
        """``config.yml``'s ``section.key``, or ``default``."""
        value = (self.config.get(section) or {}).get(key)
        return default if value is None else value


_BOOL = "tag:yaml.org,2002:bool"


def yaml_12_booleans(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    """``base`` with booleans as YAML 1.2 (and so Rasa) reads them: only true/false.

    PyYAML follows YAML 1.1, where yes/no/on/off are booleans too, so ``- intent: on``
    trained a label "True" and ``- text: yes`` was refused. Tags are resolved in Python
    for both parsers, so libyaml keeps its speed; the subclass has its own resolver
    table, and PyYAML's loaders are left as they were."""
    loader: type[yaml.SafeLoader] = type(base.__name__ + "12", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return loader


# libyaml's parser where PyYAML was built with it (ten times faster on the demo shop's
# files), else PyYAML's own; both build the same safe types and keep every node's line.
YamlLoader = yaml_12_booleans(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load``, with libyaml when it is there."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a safe loader


def compose_yaml(text: str) -> yaml.Node | None:
    """``yaml.compose`` (the node tree, with lines) with the safe loader above."""
    return yaml.compose(text, Loader=YamlLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ProjectError(str(path), f"invalid YAML: {exc}", None if line is None else line + 1) from exc
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # a file saved as Latin-1 or UTF-16, say
        raise ProjectError(str(path), f"not UTF-8: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProjectError(str(path), "expected a mapping at the top level")
    return data


def _unknown(project: Project, path: Path, data: dict[str, Any], known: set[str]) -> None:
    for key in data:
        if key not in known:
            project.warn(f"{path}: unknown key {key!r} ignored")


def _load_domain(project: Project, path: Path) -> None:
    domain = read_yaml(path)
    project.domain = domain
    _unknown(project, path, domain, DOMAIN_KEYS)
    for item in domain.get("intents") or []:
        # Rasa allows "- greet" and "- greet: {use_entities: []}".
        name = next(iter(item)) if isinstance(item, dict) else str(item)
        project.intents.append(name)
    for item in domain.get("entities") or []:
        project.entities.append(next(iter(item)) if isinstance(item, dict) else str(item))
    for name, variations in (domain.get("responses") or {}).items():
        if not isinstance(variations, list) or not variations:
            raise ProjectError(str(path), f"response {name!r} needs a list of variations")
        project.responses[name] = [v if isinstance(v, dict) else {"text": str(v)} for v in variations]
    slots = domain.get("slots") or {}
    if not isinstance(slots, dict):
        raise ProjectError(str(path), "'slots' must be a mapping of slot name to its settings")
    project.slots = {str(k): dict(v or {}) for k, v in slots.items()}
    for form, spec in (domain.get("forms") or {}).items():
        spec = spec or {}
        required = spec.get("required_slots") or []
        if isinstance(required, dict):  # Rasa 2: required_slots: {slot: [mappings]}
            required = list(required)
        project.forms[str(form)] = [str(x) for x in required]
    project.actions = [next(iter(a)) if isinstance(a, dict) else str(a) for a in domain.get("actions") or []]
    project.session_config = dict(domain.get("session_config") or {})


def _load_rule(project: Project, path: Path, rule: dict[str, Any]) -> None:
    steps = [s for s in rule.get("steps") or [] if isinstance(s, dict)]
    condition = [c for c in rule.get("condition") or [] if isinstance(c, dict)]
    loop = next((c["active_loop"] for c in condition if c.get("active_loop")), None)
    intent = next((str(s["intent"]) for s in steps if "intent" in s), None)
    actions = [str(s["action"]) for s in steps if "action" in s]
    name = str(rule.get("rule") or "")
    if intent is None and loop and actions and actions[0] == loop:
        # "Submit the form": [form, active_loop: null, action_after...]
        project.submits.setdefault(str(loop), [a for a in actions[1:] if a != "action_listen"])
        project.rule_list.append(Rule(actions[1:], None, str(loop), name))
        return
    if intent and actions:
        project.rule_list.append(Rule(actions, intent, loop, name))
        if loop is None:
            project.rules.setdefault(intent, [a for a in actions if a != "action_listen"])
        return
    if steps:
        project.warn(f"{path}: rule {name!r} has a shape deskmate does not run "
                     "(an intent followed by actions, or a form-submit rule)")


def _load_data(project: Project, path: Path) -> None:
    data = read_yaml(path)
    project.data_files.append(path)
    _unknown(project, path, data, DATA_KEYS)
    for item in data.get("nlu") or []:
        if not isinstance(item, dict):
            raise ProjectError(str(path), f"nlu: each item must be a mapping, not {item!r}")
        if "intent" in item:
            project.examples.setdefault(str(item["intent"]), []).extend(
                section_examples(str(path), item))
        # synonym / regex / lookup sections: read by dialogue.entities.
    for rule in data.get("rules") or []:
        if isinstance(rule, dict):
            _load_rule(project, path, rule)
    if data.get("stories"):
        project.warn(f"{path}: stories are not used for predictions; write them as rules "
                     "(or as conversation tests under tests/)")


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
        project.config = read_yaml(config)
        for key in project.config:
            if key not in CONFIG_KEYS and key not in RASA_CONFIG_KEYS:
                project.warn(f"{config}: unknown key {key!r} ignored")
    for intent, actions in project.rules.items():
        for action in actions:
            if action.startswith("utter_") and action not in project.responses:
                project.warn(f"{root}: rule for {intent!r} uses unknown response {action!r}")
    return project
