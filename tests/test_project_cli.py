"""The bot developer's commands, run as a developer would: deskmate init, validate, train,
test and chat on a new project; validate names every problem with file and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dialogue.validate import validate
from tests.conftest import ROOT, SHOP


def deskmate(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                               "DESKMATE_LM_BACKEND": "none", **(env or {})})


def test_init_validate_train_test_and_chat(tmp_path: Path, redis_url: str) -> None:
    project = tmp_path / "newbot"
    assert deskmate("init", str(project)).returncode == 0
    assert (project / "actions" / "actions.py").is_file() and (project / "tests").is_dir()
    again = deskmate("init", str(project))
    assert again.returncode == 1 and "not empty" in again.stderr

    checked = deskmate("validate", "--project", str(project))
    assert checked.returncode == 0, checked.stdout
    assert "0 error(s)" in checked.stdout

    untrained = deskmate("test", "--project", str(project))
    assert untrained.returncode == 1 and "deskmate train" in untrained.stderr

    cache = tmp_path / "graphs"
    trained = deskmate("train", "--project", str(project), "--quiet",
                       env={"DESKMATE_NLU_CACHE": str(cache)})
    assert trained.returncode == 0, trained.stderr
    # the serving graph is built by `train`, so the server starts without exporting it
    assert "serving graph ready" in trained.stdout and len(list(cache.glob("classifier-*.onnx"))) == 1
    tested = deskmate("test", "--project", str(project), "--json", str(tmp_path / "r.json"),
                      env={"REDIS_URL": redis_url, "DESKMATE_NLU_CACHE": str(cache)})
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "4 passed, 0 failed" in tested.stdout and (tmp_path / "r.json").is_file()

    chat = deskmate("chat", "--project", str(project), "--no-lm",
                    stdin="hello\nwhere is my order\nA-1002\n/quit\n", env={"REDIS_URL": redis_url})
    assert chat.returncode == 0, chat.stderr
    assert "bot> Hello!" in chat.stdout and "[greet" in chat.stdout
    assert "Order A-1002 is processing." in chat.stdout


def test_a_failing_conversation_is_reported_with_its_line(tmp_path: Path, redis_url: str) -> None:
    project = tmp_path / "bot"
    assert deskmate("init", str(project)).returncode == 0
    assert deskmate("train", "--project", str(project), "--quiet").returncode == 0
    (project / "tests" / "broken.yml").write_text(
        "stories:\n- story: wrong expectation\n  steps:\n  - user: hello\n  - action: utter_goodbye\n")
    result = deskmate("test", "--project", str(project), env={"REDIS_URL": redis_url})
    assert result.returncode == 1
    assert "FAIL  wrong expectation" in result.stdout
    assert "broken.yml:4" in result.stdout and "expected actions ['utter_goodbye']" in result.stdout


def test_validate_names_each_problem_with_file_and_line(tmp_path: Path) -> None:
    project = tmp_path / "bot"
    assert deskmate("init", str(project)).returncode == 0
    domain = project / "domain.yml"
    domain.write_text(domain.read_text().replace("type: from_entity\n        entity: order_id",
                                                 "type: from_entity\n        entity: order_number")
                      .replace("  - out_of_scope\n", "  - out_of_scope\n\nbogus_key: 1\n", 1))
    rules = project / "data" / "rules.yml"
    rules.write_text(rules.read_text() + "\n- rule: broken\n  steps:\n  - intent: no_such_intent\n"
                     "  - action: utter_nothing\n")
    config = project / "config.yml"
    config.write_text(config.read_text().replace("intent: 0.5 ", "intent: 7 "))
    problems = [str(p) for p in validate(project)]
    text = "\n".join(problems)
    assert any("domain.yml:" in p and "order_number" in p for p in problems), text
    assert any("rules.yml:" in p and "no_such_intent" in p for p in problems), text
    assert any("rules.yml:" in p and "utter_nothing" in p for p in problems), text
    assert any("config.yml:" in p and "thresholds.intent" in p for p in problems), text
    assert any("bogus_key" in p and "warning" in p for p in problems), text
    result = deskmate("validate", "--project", str(project))
    assert result.returncode == 1 and "error(s)" in result.stdout


def test_an_action_missing_from_actions_names_the_domain_file_that_lists_it(tmp_path: Path) -> None:
    """With the domain split into a domain/ folder, the problem named a domain.yml that
    does not exist."""
    project = tmp_path / "bot"
    assert deskmate("init", str(project)).returncode == 0
    (project / "domain").mkdir()
    domain = project / "domain" / "main.yml"
    (project / "domain.yml").rename(domain)
    text = domain.read_text()
    assert "\nactions:\n" in text
    domain.write_text(text.replace("\nactions:\n", "\nactions:\n  - action_not_written\n", 1))
    result = deskmate("validate", "--project", str(project))
    line = next(x for x in result.stdout.splitlines() if "action_not_written" in x)
    assert str(domain) in line and "domain.yml" not in line, result.stdout


def test_the_demo_shop_validates_clean() -> None:
    assert [str(p) for p in validate(SHOP) if p.severity == "error"] == []


def test_projects_read_the_same_with_either_yaml_parser() -> None:
    """Projects are read with libyaml's parser where PyYAML has it (ten times faster than
    PyYAML's own); every YAML file of the demo shop, the starter project and the test
    fixtures reads the same with both, node lines included."""
    import yaml

    from dialogue.project import YamlLoader, compose_yaml, parse_yaml, yaml_12_booleans

    assert YamlLoader.__bases__ == ((yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader),)
    pure = yaml_12_booleans(yaml.SafeLoader)
    files = [p for folder in (SHOP, ROOT / "dialogue" / "starter", ROOT / "tests" / "fixtures")
             for p in sorted(folder.rglob("*.y*ml"))]
    assert len(files) > 10

    def lines(node: yaml.Node | None) -> list[tuple[str, int]]:
        if node is None:
            return []
        out = [(str(node.tag), node.start_mark.line)]
        for child in node.value if isinstance(node.value, list) else []:
            for part in child if isinstance(child, tuple) else (child,):
                out += lines(part)
        return out

    for path in files:
        text = path.read_text(encoding="utf-8")
        assert parse_yaml(text) == yaml.load(text, Loader=pure), path  # noqa: S506
        assert lines(compose_yaml(text)) == lines(yaml.compose(text, Loader=pure)), path


def test_a_rasa_project_loads_with_warnings_not_errors(tmp_path: Path) -> None:
    """Rasa 3 files with features deskmate does not run (stories, pipeline config) load."""
    project = tmp_path / "rasa"
    assert deskmate("init", str(project)).returncode == 0
    (project / "data" / "stories.yml").write_text(
        'version: "3.1"\nstories:\n- story: happy\n  steps:\n  - intent: greet\n  - action: utter_greet\n')
    (project / "config.yml").write_text(
        "recipe: default.v1\nlanguage: en\npipeline:\n- name: WhitespaceTokenizer\npolicies:\n"
        "- name: RulePolicy\n")
    problems = validate(project)
    assert not [p for p in problems if p.severity == "error"], [str(p) for p in problems]
    assert any("stories" in p.message for p in problems)


def test_a_file_not_in_utf8_is_a_problem_naming_it(tmp_path: Path) -> None:
    """A data file saved as Latin-1 is reported by `deskmate validate` with its name,
    not a traceback (UnicodeDecodeError escaped read_yaml)."""
    project = tmp_path / "bot"
    (project / "data").mkdir(parents=True)
    (project / "domain.yml").write_text("version: '3.1'\nintents: [greet]\n", encoding="utf-8")
    nlu = project / "data" / "nlu.yml"
    nlu.write_bytes("nlu:\n- intent: greet\n  examples: |\n    - grüß dich\n".encode("latin-1"))
    assert [(p.file, p.message.split(":")[0]) for p in validate(project)] == [(str(nlu), "not UTF-8")]
    result = deskmate("validate", "--project", str(project))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{nlu}: error: not UTF-8" in result.stdout


def test_a_test_run_without_conversations_is_an_error(tmp_path: Path, trained_shop: Path,
                                                      redis_url: str) -> None:
    """Test files holding no conversations (a typo in 'stories:', an empty file) used to
    print "0 passed, 0 failed" and exit 0, a green run that tested nothing."""
    empty = tmp_path / "empty.yml"
    empty.write_text("version: '3.1'\nstorys:\n- story: typo in the key\n")
    result = deskmate("test", "--project", str(trained_shop), str(empty), env={"REDIS_URL": redis_url})
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{empty}: no conversations to run" in result.stderr
