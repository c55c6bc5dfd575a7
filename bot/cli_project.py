"""Bot-developer commands: ``deskmate init``, ``validate``, ``test`` and ``chat``.

``test`` and ``chat`` run the real engine in-process (the trained classifier,
the knowledge base, the project's rasa-sdk actions) without a server; custom
actions that keep data in Redis get ``REDIS_URL`` or an embedded Redis in a
temporary folder, under a key prefix of their own that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot import config
from bot.errors import ProjectError

STARTER = Path(__file__).resolve().parent.parent / "dialogue" / "starter"


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="create a new bot project",
                       description="Create a bot project (domain, NLU data, rules, knowledge, catalog, "
                                   "rasa-sdk actions, conversation tests) to start from.")
    p.add_argument("directory", type=Path)
    p.set_defaults(handler=_init)

    v = sub.add_parser("validate", help="check a bot project and list every problem",
                       description="Check a bot project; every problem is named with its file and line. "
                                   "Exit status 1 when there are errors.")
    v.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    v.set_defaults(handler=_validate)

    t = sub.add_parser("test", help="run the project's conversation tests",
                       description="Run the conversation tests in PROJECT/tests/*.yml against the engine.")
    t.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    t.add_argument("--lm", action="store_true", help="use the language model (off: its fallbacks answer)")
    t.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    t.add_argument("files", nargs="*", type=Path, help="test files (default: PROJECT/tests/*.yml)")
    t.set_defaults(handler=_test)

    c = sub.add_parser("chat", help="talk to the bot in the terminal",
                       description="Talk to the bot in the terminal; each turn's analysis is shown. "
                                   "Type /quit to leave, /restart for a new conversation, /intent{...} "
                                   "to click a button.")
    c.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    c.add_argument("--no-lm", action="store_true", help="do not load the language model")
    c.set_defaults(handler=_chat)


def _project(args: argparse.Namespace) -> Path:
    return Path(args.project or config.from_env().project)


def _init(args: argparse.Namespace) -> int:
    target: Path = args.directory
    if target.exists() and any(target.iterdir()):
        raise ProjectError(str(target), "directory exists and is not empty")
    shutil.copytree(STARTER, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "models"))
    print(f"created a bot project in {target}")
    print(f"next: deskmate train --project {target} && deskmate test --project {target} "
          f"&& deskmate run --project {target}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dialogue.validate import report, validate

    root = _project(args)
    problems = validate(root)
    if not any(p.severity == "error" for p in problems) and (root / "actions").is_dir():
        problems += _check_actions(root)
    for line in report(problems):
        print(line)
    return 1 if any(p.severity == "error" for p in problems) else 0


def _check_actions(root: Path) -> list[Any]:
    """Custom actions named in the domain must exist in the project's rasa-sdk package."""
    from bot.actions import open_action_runner
    from dialogue.project import load_project
    from dialogue.validate import BUILTIN_ACTIONS, DomainLines, Problem

    project = load_project(root)
    runner = open_action_runner(root, None)
    names = runner.names() if runner is not None else None
    if names is None:
        return []
    missing = [a for a in project.actions if a not in names and a not in BUILTIN_ACTIONS
               and not a.startswith(("utter_", "validate_"))]
    entries = DomainLines(project)  # domain.yml, or the file of a domain/ folder that lists it
    return [Problem(*entries.find(a), f"action {a!r} is listed in the domain but "
                    f"{root / 'actions'} does not define it") for a in missing]


@contextlib.contextmanager
def _actions_redis() -> Iterator[None]:
    """A Redis for in-process actions: REDIS_URL if set, else an embedded one; own key prefix."""
    prefix = f"dm:cli-{uuid.uuid4().hex[:8]}:shop:"
    saved = {k: os.environ.get(k) for k in ("DESKMATE_ACTIONS_REDIS_URL", "DESKMATE_ACTIONS_PREFIX")}
    url = os.environ.get("DESKMATE_REDIS_URL") or os.environ.get("REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not url:
            from bot.embedded_redis import EmbeddedRedis

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="deskmate-"))
            url = stack.enter_context(EmbeddedRedis(Path(folder))).url
        os.environ["DESKMATE_ACTIONS_REDIS_URL"] = url
        os.environ["DESKMATE_ACTIONS_PREFIX"] = prefix
        try:
            yield
        finally:
            _drop_keys(url, prefix)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _drop_keys(url: str, prefix: str) -> None:
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _offline_engine(root: Path, *, lm: bool) -> tuple[Any, Any]:
    from bot.brain import build_engine, open_writer
    from dialogue.project import load_project
    from model.classifier import load_project_classifier

    project = load_project(root)
    classifier = load_project_classifier(root)
    settings = config.from_env().replace(project=root)
    writer = open_writer(settings, project)[0] if lm else None
    engine = build_engine(project, embed=classifier.embed, embedding_id=classifier.embedding_id,
                          actions_url=settings.action_endpoint, writer=writer)

    def understand(texts: list[str]) -> list[dict[str, Any]]:
        return classifier.parse_batch(texts, vectors=True)

    return engine, understand


def _test(args: argparse.Namespace) -> int:
    from dialogue.convtest import ConversationRunner, conversation_files, load_tests

    root = _project(args)
    files = list(args.files) or conversation_files(root)
    if not files:
        raise ProjectError(str(root / "tests"), "no conversation tests found (tests/*.yml)")
    tests = load_tests(files)
    if not tests:  # "0 passed, 0 failed" and exit 0 would read as a green run
        where = str(files[0]) if len(files) == 1 else ", ".join(str(f) for f in files)
        raise ProjectError(where, "no conversations to run (expected 'stories:' or 'conversations:' "
                           "with '- story: ...' entries and their steps)")
    config.configure_logging("WARNING")
    with _actions_redis():
        engine, understand = _offline_engine(root, lm=args.lm)
        runner = ConversationRunner(engine, understand)

        async def run_all() -> list[Any]:
            return [await runner.run(t) for t in tests]

        failures = asyncio.run(run_all())
    results = []
    for test, failure in zip(tests, failures, strict=True):
        mark = "PASS" if failure is None else "FAIL"
        print(f"{mark}  {test.name}")
        if failure is not None:
            print(f"      {failure}")
        results.append({"name": test.name, "file": test.file, "line": test.line,
                        "passed": failure is None, "failure": None if failure is None else str(failure)})
    failed = sum(f is not None for f in failures)
    print(f"\n{len(tests) - failed} passed, {failed} failed, {len(tests)} conversations")
    if args.json:
        args.json.write_text(json.dumps({"passed": len(tests) - failed, "failed": failed,
                                         "conversations": results}, indent=2))
    return 1 if failed else 0


def _chat(args: argparse.Namespace) -> int:
    from dialogue.convtest import ConversationRunner

    root = _project(args)
    config.configure_logging("WARNING")
    with _actions_redis():
        engine, understand = _offline_engine(root, lm=not args.no_lm)
        asyncio.run(_chat_loop(root, ConversationRunner(engine, understand)))
    return 0


async def _chat_loop(root: Path, runner: Any) -> None:
    """One event loop for the whole chat, so actions and the model keep their connections."""
    from dialogue.types import Conversation

    def fresh() -> Conversation:
        return Conversation(session_id=f"cli-{uuid.uuid4().hex[:8]}", status="bot")

    conv = fresh()
    print("Talking to the bot in", root, "(/quit to leave, /restart for a new conversation)")
    while True:
        try:
            text = (await asyncio.to_thread(input, "you> ")).strip()
        except EOFError:
            break
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/restart":
            conv = fresh()
            continue
        payload = text if text.startswith("/") else None
        conv, seen = await runner.turn(conv, text, payload)
        for reply in seen.replies:
            print(f"bot> {reply}")
        print(f"     [{seen.intent} {seen.confidence:.2f} · {seen.policy} · actions {seen.actions}"
              + (f" · sources {seen.sources}" if seen.sources else "")
              + (f" · slots {seen.slots}" if seen.slots else "")
              + (" · HANDOFF" if seen.handoff else "") + "]")
        if conv.status != "bot":
            print("     (the conversation was handed to a human; /restart to start over)")
