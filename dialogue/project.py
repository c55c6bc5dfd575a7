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
RULE_KEYS = {"rule", "steps", "condition", "conversation_start", "wait_for_user_input", "metadata"}
RETRIEVAL_SEPARATOR = "/"  # chitchat/ask_name: the retrieval intent chitchat, answer ask_name
SLOT_IS_SET = object()  # `slot_was_set: [name]` without a value: any value but None


@dataclass(frozen=True)
class Rule:
    """One turn of a rule in ``data/*.yml``: when its conditions hold, ``intent`` -> ``actions``.

    A rule with ``intent`` None is a form-submit rule (``after`` is the form that just
    completed) or a rule that starts with an action (``after``: it continues once that
    action ran, see ``wait_for_user_input``). A multi-turn rule becomes one Rule per
    customer turn; the later ones carry the turns before them in ``earlier``."""

    actions: tuple[str, ...]
    intent: str | None = None
    active_loop: str | None = None  # condition: only while this form is active
    no_loop: bool = False  # condition `active_loop: null`: only while no form is active
    slots: tuple[tuple[str, Any], ...] = ()  # condition slot_was_set: (slot, value); None: not set
    conversation_start: bool = False  # only for the conversation's first customer message
    earlier: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (intent, actions) of the turns before
    after: str | None = None  # an action-started rule: the action it follows
    wait_for_user_input: bool = True  # False: an action-started rule may continue after it
    name: str = ""
    file: str = ""  # the data file it came from

    @property
    def specificity(self) -> int:
        """How much of the conversation the rule pins down. As Rasa's RulePolicy picks the
        matching rule with the longest state key, the more specific matching rule wins."""
        return (len(self.slots) + bool(self.active_loop) + self.no_loop + self.conversation_start
                + 10 * len(self.earlier))


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
    # intent -> the actions of its plainest rule (fewest conditions), in order; the engine
    # matches rule_list with its conditions, this is what answers "what does greet do?"
    rules: dict[str, list[str]] = field(default_factory=dict)
    submits: dict[str, list[str]] = field(default_factory=dict)  # form -> actions once it is done
    rule_list: list[Rule] = field(default_factory=list)  # every rule turn, in file order
    session_config: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data_files: list[Path] = field(default_factory=list)
    domain_files: list[Path] = field(default_factory=list)  # domain.yml, or the files of domain/
    defined_in: dict[tuple[str, str], Path] = field(default_factory=dict)  # (section, name) -> file
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

    def retrieval_responses(self, action: str) -> list[str]:
        """``utter_chitchat/ask_name``, ... for ``utter_chitchat``: the answers of a retrieval intent."""
        prefix = action + RETRIEVAL_SEPARATOR
        return [name for name in self.responses if name.startswith(prefix)]

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


def _merge_domain(merged: dict[str, Any], part: dict[str, Any]) -> None:
    """Fold one file of a ``domain/`` folder into ``merged``, as Rasa merges a split domain:
    lists are joined (each item once), mappings are joined (the first file to define a
    name keeps it), other values come from the first file that has them."""
    for key, value in part.items():
        have = merged.get(key)
        if isinstance(have, list) and isinstance(value, list):
            merged[key] = have + [v for v in value if v not in have]
        elif isinstance(have, dict) and isinstance(value, dict):
            merged[key] = {**value, **have}
        elif have is None:
            merged[key] = value


def _responses(project: Project, path: Path, responses: Any) -> None:
    if not isinstance(responses, dict):
        raise ProjectError(str(path), "'responses' must be a mapping of response name to variations")
    for name, variations in responses.items():
        if not isinstance(variations, list) or not variations:
            raise ProjectError(str(path), f"response {name!r} needs a list of variations")
        if name in project.responses:
            project.warn(f"{path}: response {name!r} is defined twice; the first one is kept")
            continue
        project.responses[str(name)] = [v if isinstance(v, dict) else {"text": str(v)} for v in variations]
        project.defined_in[("responses", str(name))] = path


def _load_domain(project: Project, path: Path) -> None:
    """Add one domain file to the project (``domain.yml``, or each file of ``domain/``)."""
    domain = read_yaml(path)
    project.domain_files.append(path)
    _merge_domain(project.domain, domain)
    _unknown(project, path, domain, DOMAIN_KEYS)
    for item in domain.get("intents") or []:
        # Rasa allows "- greet" and "- greet: {use_entities: []}".
        name = next(iter(item)) if isinstance(item, dict) else str(item)
        if name not in project.intents:
            project.intents.append(name)
    for item in domain.get("entities") or []:
        entity = next(iter(item)) if isinstance(item, dict) else str(item)
        if entity not in project.entities:
            project.entities.append(entity)
    _responses(project, path, domain.get("responses") or {})
    slots = domain.get("slots") or {}
    if not isinstance(slots, dict):
        raise ProjectError(str(path), "'slots' must be a mapping of slot name to its settings")
    for name, spec in slots.items():
        if str(name) not in project.slots:
            project.slots[str(name)] = dict(spec or {})
            project.defined_in[("slots", str(name))] = path
    for form, spec in (domain.get("forms") or {}).items():
        spec = spec or {}
        required = spec.get("required_slots") or []
        if isinstance(required, dict):  # Rasa 2: required_slots: {slot: [mappings]}
            required = list(required)
        if str(form) not in project.forms:
            project.forms[str(form)] = [str(x) for x in required]
            project.defined_in[("forms", str(form))] = path
    for action in domain.get("actions") or []:
        name = next(iter(action)) if isinstance(action, dict) else str(action)
        if name not in project.actions:
            project.actions.append(name)
    project.session_config = {**dict(domain.get("session_config") or {}), **project.session_config}


def base_intent(intent: str) -> str:
    """The intent a rule names for ``intent``: ``chitchat`` for the retrieval intent
    ``chitchat/ask_name`` (Rasa's ResponseSelector), which ``utter_chitchat`` answers with
    the response ``utter_chitchat/ask_name``."""
    return intent.split(RETRIEVAL_SEPARATOR, 1)[0]


def _slot_conditions(items: Any) -> list[tuple[str, Any]]:
    """``slot_was_set: [{slot: value}, slot]`` as (slot, value); a bare name means "set"."""
    out: list[tuple[str, Any]] = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            out.extend((str(k), v) for k, v in item.items())
        elif item is not None:
            out.append((str(item), SLOT_IS_SET))
    return out


def _alternatives(step: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps an ``or:`` step stands for (one each), or the step itself."""
    if "or" not in step:
        return [step]
    return [s for s in step.get("or") or [] if isinstance(s, dict) and ("intent" in s or "slot_was_set" in s)]


def _expand_or(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every way through a rule's ``or:`` steps: Rasa trains one rule per alternative."""
    ways: list[list[dict[str, Any]]] = [[]]
    for step in steps:
        ways = [way + [alt] for way in ways for alt in _alternatives(step)]
    return ways


def _load_rule(project: Project, path: Path, rule: dict[str, Any]) -> None:
    name = str(rule.get("rule") or "")
    steps = [s for s in rule.get("steps") or [] if isinstance(s, dict)]
    condition = [c for c in rule.get("condition") or [] if isinstance(c, dict)]
    loops = [c["active_loop"] for c in condition if "active_loop" in c]
    loop = str(loops[0]) if loops and loops[0] else None
    no_loop = bool(loops) and not loops[0]  # `active_loop: null`: no form may be active
    slots = [pair for c in condition if "slot_was_set" in c for pair in _slot_conditions(c["slot_was_set"])]
    start = bool(rule.get("conversation_start", False))
    wait = rule.get("wait_for_user_input", True) is not False
    for key in sorted(set(rule) - RULE_KEYS):
        project.warn(f"{path}: rule {name!r}: unknown key {key!r} ignored")
    bad = [s for s in steps if "or" in s and len(_alternatives(s)) != len(s.get("or") or [])]
    if bad:
        project.warn(f"{path}: rule {name!r}: an `or:` step may hold only intents or slot_was_set; "
                     "the other alternatives are left out")
    for way in _expand_or(steps):
        _load_rule_steps(project, path, name, way, loop=loop, no_loop=no_loop, slots=slots,
                         start=start, wait=wait)


def _load_rule_steps(project: Project, path: Path, name: str, steps: list[dict[str, Any]], *,
                     loop: str | None, no_loop: bool, slots: list[tuple[str, Any]], start: bool,
                     wait: bool) -> None:
    # Cut the steps into customer turns: an intent and the actions after it. slot_was_set
    # right after the intent is what the message set (a condition, as in Rasa's rule states);
    # after an action it is what the action set, which deskmate does not check.
    turns: list[tuple[str | None, list[str], list[tuple[str, Any]]]] = []
    for n, step in enumerate(steps):
        if "intent" in step:
            turns.append((str(step["intent"]), [], []))
        elif "action" in step:
            if not turns:
                turns.append((None, [], []))
            if str(step["action"]) != "action_listen":
                turns[-1][1].append(str(step["action"]))
        elif "slot_was_set" in step and turns and not turns[-1][1]:
            turns[-1][2].extend(_slot_conditions(step["slot_was_set"]))
        elif ("slot_was_set" in step and turns and turns[-1][1][-1] not in project.forms
              and any(slot != "requested_slot" for slot, _ in _slot_conditions(step["slot_was_set"]))
              and any("action" in later for later in steps[n + 1:])):
            # Rasa would choose the next action by the slot an action just set; deskmate
            # runs the rule's actions in a row, so say so rather than branch silently wrong.
            project.warn(f"{path}: rule {name!r}: the slot_was_set after action {turns[-1][1][-1]!r} "
                         "is not checked; the actions after it run whatever that action set "
                         "(write the branch in the custom action, e.g. with a FollowupAction)")
    if not turns or not any(actions for _, actions, _ in turns):
        if steps:
            project.warn(f"{path}: rule {name!r} has no action to run and is not used")
        return
    first_intent, first_actions, _ = turns[0]
    if first_intent is None:
        after, rest = first_actions[0], first_actions[1:]
        if len(turns) > 1:
            project.warn(f"{path}: rule {name!r} starts with an action and goes on for more than one "
                         "customer turn; deskmate runs only its first part")
        if after in project.forms and loop == after:
            # "Submit the form": [form, active_loop: null, action_after...]
            project.submits.setdefault(after, rest)
        project.rule_list.append(Rule(tuple(rest), None, loop, no_loop, tuple(slots), start, (),
                                      after, wait, name, str(path)))
        return
    earlier: list[tuple[str, tuple[str, ...]]] = []
    conditions = list(slots)
    for n, (intent, actions, set_by_message) in enumerate(turns):
        assert intent is not None  # only the first turn can start with an action
        conditions += set_by_message
        last = n == len(turns) - 1
        project.rule_list.append(Rule(tuple(actions), intent, loop, no_loop, tuple(conditions),
                                      start and n == 0, tuple(earlier), None, wait or not last, name,
                                      str(path)))
        earlier.append((intent, tuple(actions)))


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
    if data.get("responses"):
        # Rasa keeps retrieval responses (utter_chitchat/ask_name) next to their NLU data.
        _responses(project, path, data["responses"])
        project.domain.setdefault("responses", {})
        project.domain["responses"] = {**dict(data["responses"]), **project.domain["responses"]}
    for rule in data.get("rules") or []:
        if isinstance(rule, dict):
            _load_rule(project, path, rule)
    if data.get("stories"):
        project.warn(f"{path}: stories are not used for predictions; write them as rules "
                     "(or as conversation tests under tests/)")


def domain_files(root: Path) -> list[Path]:
    """``domain.yml`` (or ``.yaml``), else every YAML file under ``domain/``, sorted, as Rasa
    reads a domain split across files; [] when the project has neither."""
    for name in ("domain.yml", "domain.yaml"):
        if (root / name).is_file():
            return [root / name]
    for name in ("domain", "domain.yml"):  # a folder, even one named domain.yml
        folder = root / name
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml"))
    return []


def load_project(path: Path | str) -> Project:
    """Load the project at ``path``; raise :class:`ProjectError` naming the bad file."""
    root = Path(path)
    domains = domain_files(root)
    if not domains:
        raise ProjectError(str(root), "not a bot project: domain.yml is missing "
                           "(point --project / DESKMATE_PROJECT at a project directory)")
    project = Project(path=root)
    for file in domains:
        _load_domain(project, file)
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
    # What an intent does when no condition is in play: its rule with the fewest conditions.
    for rule in sorted(project.rule_list, key=lambda r: r.specificity):
        if rule.intent is not None and not rule.earlier:
            project.rules.setdefault(rule.intent, list(rule.actions))
    chained = {r.actions[-1] for r in project.rule_list if not r.wait_for_user_input and r.actions}
    for rule in project.rule_list:
        if rule.after and rule.after not in chained and not (rule.after in project.forms
                                                             and rule.active_loop == rule.after):
            project.warn(f"{rule.file}: rule {rule.name!r} starts with the action {rule.after!r}, and "
                         "no rule with `wait_for_user_input: false` ends with it: it never runs "
                         "(deskmate has no stories to predict it from)")
        for action in rule.actions:
            if (action.startswith("utter_") and action not in project.responses
                    and not project.retrieval_responses(action)):
                project.warn(f"{rule.file}: rule {rule.name!r} uses unknown response {action!r}")
    return project
