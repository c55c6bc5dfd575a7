"""Custom actions run by rasa-sdk: in this process, or on an action server.

Both runners implement :class:`dialogue.actions.ActionRunner` and speak Rasa's
action-call format, so an ``actions/`` package written for Rasa runs here
unchanged:

- :class:`InProcessActions` loads the package into this process and runs it with
  rasa-sdk's own ``ActionExecutor``, as ``python -m rasa_sdk --actions actions`` would;
- :class:`RemoteActions` POSTs the same payload to an action server's ``/webhook``
  (rasa-sdk's, or anything that speaks the protocol) over one aiohttp session.

:func:`open_action_runner` picks one for a bot project.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import rasa_sdk
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import ActionExecutionRejection, ActionNotFoundException

from bot.errors import ConfigError, ProjectError
from dialogue.actions import ActionError, ActionResult, ActionRunner

log = logging.getLogger(__name__)

# A proxy or load balancer in front of an action server answers these when it could
# not hand the request on (upstream down, restarting, overloaded): the action did not
# run, so asking again is safe. 504 is left out: the upstream may have got the request.
RETRY_STATUSES = frozenset({502, 503})
CONNECT_TIMEOUT = 3.0  # seconds; a local or same-cluster action server accepts far sooner


def action_call(name: str, tracker: dict[str, Any], domain: dict[str, Any]) -> dict[str, Any]:
    """The body Rasa POSTs to an action server's ``/webhook`` to run action ``name``."""
    return {
        "next_action": name,
        "sender_id": tracker.get("sender_id"),
        "tracker": tracker,
        "domain": domain,
        # Rasa sends its own version; rasa-sdk warns unless major.minor match its own,
        # and ours is the rasa-sdk this was written and tested against.
        "version": rasa_sdk.__version__,
    }


def parse_result(name: str, body: object) -> ActionResult:
    """Check an action's answer is rasa-sdk's ``{"events": [...], "responses": [...]}``."""
    if not isinstance(body, dict):
        raise ActionError(name, "failed", f"expected a JSON object, got {type(body).__name__}")
    events, responses = body.get("events", []), body.get("responses", [])
    for field, value in (("events", events), ("responses", responses)):
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ActionError(name, "failed", f"{field!r} must be a list of objects")
    return ActionResult(events=events, responses=responses)


class InProcessActions:
    """Runs an actions package in this process with rasa-sdk's ``ActionExecutor``.

    ``package`` is imported with ``search_path`` (the bot project directory, which
    holds ``actions/``) first on ``sys.path``. Only actions defined in ``package``
    are served: rasa-sdk registers every ``Action`` subclass the process has
    imported, which in its own server is the same thing.

    A synchronous ``run`` goes to a worker thread so it cannot stall the event loop;
    ``async def run`` actions run on the loop, as in rasa-sdk's server.
    """

    def __init__(self, package: str, *, search_path: Path | None = None, timeout: float = 10.0) -> None:
        self.package = package
        self.timeout = timeout  # seconds, as an action server's answer is waited for
        self._executor = ActionExecutor()
        _import_package(package, search_path)
        try:
            self._executor.register_package(package)
        # rasa-sdk exits the process when a submodule fails to import, and instantiates
        # every Action subclass it can find, any of which may raise.
        except (SystemExit, Exception) as exc:
            raise ProjectError(str(search_path or package),
                               f"cannot register actions package {package!r}: {exc!r}") from exc
        self._executor.actions = {
            name: _off_loop(run) for name, run in self._executor.actions.items()
            if _defined_in(run, package)
        }
        log.info("actions from %r: %s", package, ", ".join(sorted(self._executor.actions)) or "none")

    def names(self) -> set[str] | None:
        return set(self._executor.actions)

    async def run(self, name: str, tracker: dict[str, Any], domain: dict[str, Any]) -> ActionResult:
        """Run ``name`` through rasa-sdk's executor; raise :class:`ActionError` when it can't."""
        try:
            result = await asyncio.wait_for(self._executor.run(action_call(name, tracker, domain)),
                                            self.timeout)
        except TimeoutError as exc:
            # The turn goes on without it (a synchronous action's thread cannot be stopped
            # and finishes on its own); it may have done its work, as a remote one may.
            log.warning("action %r: no answer within %ss", name, self.timeout)
            raise ActionError(name, "unavailable", f"no answer within {self.timeout}s") from exc
        except ActionExecutionRejection as exc:
            raise ActionError(name, "rejected", exc.message) from exc
        except ActionNotFoundException as exc:
            raise ActionError(name, "unknown", exc.message) from exc
        except Exception as exc:
            log.exception("action %r raised", name)
            raise ActionError(name, "failed", f"{type(exc).__name__}: {exc}") from exc
        if result is None:  # the executor's answer to an empty action name
            raise ActionError(name, "unknown", "no action name")
        try:
            # Through JSON, so the engine gets exactly what the wire would carry, and a
            # value JSON cannot carry fails here as it would on an action server.
            body = json.loads(json.dumps(result.model_dump()))
        except (TypeError, ValueError) as exc:
            raise ActionError(name, "failed", f"result is not JSON: {exc}") from exc
        return parse_result(name, body)

    async def close(self) -> None:
        """Nothing to release; here so callers can close either runner."""


def _import_package(package: str, search_path: Path | None) -> None:
    if search_path is not None:
        root = str(search_path.resolve())
        if root not in sys.path:  # first: the project's own package wins over an installed one
            sys.path.insert(0, root)
        loaded = sys.modules.get(package)
        if loaded is not None and not _loaded_from(loaded, search_path.resolve()):
            # One import name, one package per process (as in rasa-sdk's own server).
            raise ProjectError(root, f"another package named {package!r} is already loaded "
                                     f"from {getattr(loaded, '__file__', None) or loaded}")
    importlib.invalidate_caches()
    try:
        importlib.import_module(package)
    except Exception as exc:
        where = str(search_path / package) if search_path is not None else package
        raise ProjectError(where, f"cannot import actions package: {type(exc).__name__}: {exc}") from exc


def _loaded_from(module: Any, root: Path) -> bool:
    paths = list(getattr(module, "__path__", None) or [])
    if getattr(module, "__file__", None):
        paths.append(module.__file__)
    return any(Path(p).resolve().is_relative_to(root) for p in paths)


def _defined_in(run: Callable[..., Any], package: str) -> bool:
    """Whether an executor entry (a bound ``Action.run`` or a function) comes from ``package``."""
    owner = getattr(run, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(run, "__module__", "")
    return module == package or module.startswith(package + ".")


def _off_loop(run: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(run):
        return run

    @functools.wraps(run)
    async def in_thread(dispatcher: Any, tracker: Any, domain: Any) -> Any:
        return await asyncio.to_thread(run, dispatcher, tracker, domain)

    return in_thread


class RemoteActions:
    """Runs actions on an action server over Rasa's webhook protocol.

    ``url`` is the full webhook address, e.g. ``http://127.0.0.1:5055/webhook``.
    Answers: 200 → the result; 400 → ``rejected``; 404 → ``unknown``; 500 (rasa-sdk's
    answer when the action raised) and anything unparseable → ``failed``.

    Retries: only when the request certainly did not run the action — the connection
    was refused or timed out before it was made, or a proxy answered 502/503 — up to
    ``retries`` more times, waiting ``backoff``, then twice that, ... Then
    ``unavailable``. A timeout or dropped connection *after* the request was sent is
    ``unavailable`` at once: the action may have run (an order may be cancelled), and
    running it a second time is not ours to decide.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.25) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("action_endpoint", f"must be an http:// or https:// URL, got {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("action_endpoint", "timeout must be > 0, retries and backoff >= 0")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None

    def names(self) -> set[str] | None:
        return None  # the server knows; the protocol has no way to ask before running

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a ClientSession belongs to the running event loop.
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout,
                                            sock_connect=min(self.timeout, CONNECT_TIMEOUT))
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def run(self, name: str, tracker: dict[str, Any], domain: dict[str, Any]) -> ActionResult:
        """POST the action call; retry only what cannot have run (see the class docstring)."""
        try:
            payload = json.dumps(action_call(name, tracker, domain))
        except (TypeError, ValueError) as exc:
            raise ActionError(name, "failed", f"tracker or domain is not JSON: {exc}") from exc
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self._client().post(
                        self.url, data=payload, headers={"Content-Type": "application/json"}) as resp:
                    # Bytes, not resp.text(): that raises UnicodeDecodeError, which is no
                    # ClientError, on a body that is not in its charset (a proxy's error page).
                    status, body = resp.status, await resp.read()
                    encoding = resp.get_encoding()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                why = f"cannot connect: {exc}"  # nothing was sent: safe to try again
                log.warning("action %r: %s (attempt %d)", name, why, attempt + 1)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("action %r: %s after the request was sent", name, type(exc).__name__)
                raise ActionError(name, "unavailable",
                                  f"{self.url}: no answer within {self.timeout}s "
                                  f"({type(exc).__name__}); not retried, it may have run") from exc
            if status in RETRY_STATUSES:
                why = f"HTTP {status}"
                log.warning("action %r: %s from %s (attempt %d)", name, why, self.url, attempt + 1)
                continue
            return _answer(name, status, body, encoding)
        raise ActionError(name, "unavailable", f"{self.url}: {why} ({self.retries + 1} attempts)")


def _answer(name: str, status: int, raw: bytes, encoding: str) -> ActionResult:
    """Turn an action server's HTTP answer (the body's bytes and the charset it declares,
    else UTF-8) into a result or an :class:`ActionError`."""
    text = _decode(raw, encoding, errors="replace")  # only to quote in an error
    try:
        body: Any = json.loads(_decode(raw, encoding))
    except ValueError:  # UnicodeDecodeError is one: bytes that are not in the charset
        body = None
    if status == 200:
        if body is None:
            raise ActionError(name, "failed", f"answer is not JSON: {text[:200]!r}")
        return parse_result(name, body)
    error = body.get("error") if isinstance(body, dict) else None
    message = str(error or text[:200] or "no body")
    # 400 and 404 are rasa-sdk's rejection and unknown action; a gateway's 504 means it
    # gave up waiting, like our own timeout (not retried); 500 is rasa-sdk's answer when
    # the action raised. 449 (domain missing) cannot happen: every call carries the domain.
    kind = {400: "rejected", 404: "unknown", 504: "unavailable"}.get(status, "failed")
    if kind == "failed":
        log.warning("action %r: HTTP %d: %s", name, status, message)
    raise ActionError(name, kind, message if status in (400, 404) else f"HTTP {status}: {message}")


def _decode(raw: bytes, encoding: str, *, errors: str = "strict") -> str:
    try:
        return raw.decode(encoding, errors)
    except LookupError:  # a codec Python knows that is not a text encoding (charset=rot13)
        return raw.decode("utf-8", errors)


def open_action_runner(project_dir: Path, url: str | None) -> ActionRunner | None:
    """The runner for a bot project: the action server at ``url`` when one is configured,
    else the project's own ``actions/`` package in this process, else None (no actions)."""
    if url:
        return RemoteActions(url)
    if (project_dir / "actions" / "__init__.py").is_file():
        return InProcessActions(_package_name(project_dir), search_path=project_dir)
    if (project_dir / "actions.py").is_file():
        return InProcessActions("actions", search_path=project_dir)
    return None


def _package_name(project_dir: Path) -> str:
    """``actions``, as rasa-sdk's server would import it, unless another project's ``actions``
    is already loaded in this process (several bots in one process, e.g. in tests): then the
    package is loaded under a name of its own. Its relative imports work either way; an
    absolute ``import actions.x`` in it would find the other project's package."""
    root = project_dir.resolve()
    loaded = sys.modules.get("actions")
    if loaded is None or _loaded_from(loaded, root):
        return "actions"
    name = "deskmate_actions_" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, root / "actions" / "__init__.py", submodule_search_locations=[str(root / "actions")])
        if spec is None or spec.loader is None:
            raise ProjectError(str(root / "actions"), "cannot load the actions package")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ProjectError(str(root / "actions"),
                               f"cannot import actions package: {type(exc).__name__}: {exc}") from exc
    return name
