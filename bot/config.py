"""All settings in one place.

Values come from ``DESKMATE_*`` environment variables (``REDIS_URL`` is honoured
too, as Docker and PaaS setups expect), CLI flags override them, and every value
is typed and checked here so that a bad setting fails at start with a message
that names it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from bot.security import normalize_allowed

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# scheme://host[:port], a wildcard for subdomains (https://*.example.com), or "null"
ORIGIN = re.compile(r"^(?:https?://(?:\*\.)?[a-z0-9.\-\[\]:]+|null)$", re.IGNORECASE)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Frames above max_frame_bytes get an error frame; above this the socket closes with 1009
# (websockets' max_size), so max_frame_bytes may not exceed it.
HARD_MAX_FRAME = 1 << 20


@dataclass(frozen=True)
class Settings:
    """Server settings; defaults are the ones ``make run`` uses."""

    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 in containers
    port: int = 8080  # one port serves HTTP and both websockets; 0 picks a free one
    redis_url: str | None = None  # None: start an embedded redis-server under data_dir
    project: Path = Path("examples/shop")  # the bot project directory
    data_dir: Path = Path("var")  # embedded Redis data (AOF) and other local state
    key_prefix: str = "dm:"  # every Redis key starts with this; lets apps share a Redis
    max_frame_bytes: int = 16 * 1024  # larger client frames get an error frame
    max_text_chars: int = 2000  # longer message text gets an error frame
    rate_messages: int = 20  # customer frames allowed per rate_window per connection
    rate_window: float = 10.0  # seconds
    # Per client address, across all its connections to this instance (counted in-process):
    rate_ip_messages: int = 100  # customer frames per rate_ip_window; 0: no limit
    rate_ip_window: float = 10.0  # seconds
    max_connections_per_ip: int = 50  # open websockets (both sockets); 0: no cap
    trust_proxy: bool = False  # client address from X-Forwarded-For (set only behind your proxy)
    allowed_origins: tuple[str, ...] = ()  # browser Origins allowed on both sockets; empty: any
    redact_pii: bool = True  # mask e-mails, phones, card numbers in logs and remote-LM prompts
    session_ttl: int = 7 * 24 * 3600  # seconds of inactivity before a session expires
    turn_lock_ttl: float = 30.0  # seconds a turn lock lives without renewal
    nlu_batches: int = 2  # classifier batches run at once (each on its own worker thread)
    shutdown_grace: float = 10.0  # seconds running turns get to finish on SIGTERM
    agent_token_ttl: int = 12 * 3600  # seconds an agent console login stays valid
    action_endpoint: str | None = None  # rasa-sdk action server webhook URL; None: the project's actions/
    lm_backend: str = ""  # embedded | remote | none; empty: config.yml's language_model.backend
    log_level: str = "INFO"
    log_format: str = "text"  # text (one line, key=value context) | json (one object a line)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # float("inf") parses, and an infinite TTL raised OverflowError on every turn
            if isinstance(value, float):
                _check(math.isfinite(value), f.name, f"must be a finite number, got {value}")
        _check(0 <= self.port <= 65535, "port", f"must be 0..65535, got {self.port}")
        _check(256 <= self.max_frame_bytes <= HARD_MAX_FRAME, "max_frame_bytes",
               f"must be 256..{HARD_MAX_FRAME} (the hard cap), got {self.max_frame_bytes}")
        _check(self.max_text_chars >= 1, "max_text_chars", "must be at least 1")
        _check(self.rate_messages >= 1, "rate_messages", "must be at least 1")
        _check(self.rate_window > 0, "rate_window", "must be positive")
        _check(self.rate_ip_messages >= 0, "rate_ip_messages", "must be 0 (no limit) or more")
        _check(self.rate_ip_window > 0, "rate_ip_window", "must be positive")
        _check(self.max_connections_per_ip >= 0, "max_connections_per_ip", "must be 0 (no cap) or more")
        # An entry the Origin policy cannot read is refused here, not skipped there: with
        # every entry skipped, the list would be empty, and an empty list allows everyone.
        bad = [o for o in self.allowed_origins if not ORIGIN.match(o) or normalize_allowed(o) is None]
        _check(not bad, "allowed_origins",
               "each entry must look like https://shop.example.com or https://*.shop.example.com"
               f" (a host, an optional port 1..65535, no path); cannot read {bad!r}")
        _check(self.log_format in LOG_FORMATS, "log_format", f"must be one of {', '.join(LOG_FORMATS)}")
        _check(self.session_ttl >= 1, "session_ttl", "must be at least 1 second")
        _check(self.turn_lock_ttl >= 1, "turn_lock_ttl", "must be at least 1 second")
        _check(1 <= self.nlu_batches <= 16, "nlu_batches", "must be 1..16")
        _check(self.shutdown_grace >= 0, "shutdown_grace", "must not be negative")
        _check(self.agent_token_ttl >= 1, "agent_token_ttl", "must be at least 1 second")
        _check(bool(self.key_prefix), "key_prefix", "must not be empty")
        _check(self.lm_backend in ("", "embedded", "remote", "none"), "lm_backend",
               f"must be embedded, remote or none, got {self.lm_backend!r}")
        if self.action_endpoint is not None:
            _check(self.action_endpoint.startswith(("http://", "https://")), "action_endpoint",
                   f"must be an http(s) URL such as http://localhost:5055/webhook, "
                   f"got {self.action_endpoint!r}")
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        if self.redis_url is not None:
            check_redis_url(self.redis_url, "DESKMATE_REDIS_URL")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (and validated); ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"DESKMATE_{name.upper()}", message)


def check_redis_url(url: str, variable: str) -> None:
    """Refuse a Redis URL redis-py cannot use, naming ``variable``, where it came from."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(variable, f"must start with redis://, rediss:// or unix://, got {url!r}")


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is Path:
            return Path(raw).expanduser()
        if kind is bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(raw)
        if kind is tuple:  # comma-separated; origins and hosts are case-insensitive
            return tuple(part.strip().rstrip("/").lower() for part in raw.split(",") if part.strip())
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        names: dict[type, str] = {bool: "true or false", tuple: "a comma-separated list"}
        expected = names.get(kind, kind.__name__)
        raise ConfigError(name, f"expected {expected}, got {raw!r}") from None
    return raw


def _field_kind(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    if "Path" in annotation:
        return Path
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    if annotation.startswith("bool"):
        return bool
    if annotation.startswith("tuple"):
        return tuple
    return str


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``DESKMATE_*`` variables; unset or empty ones keep their default."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = f"DESKMATE_{f.name.upper()}"
        raw = env.get(name, "").strip()
        if f.name == "redis_url" and not raw:
            name, raw = "REDIS_URL", env.get("REDIS_URL", "").strip()
        if raw:
            value = _convert(name, raw, _field_kind(f))
            if f.name == "redis_url":
                check_redis_url(value, name)  # a bad REDIS_URL is not named DESKMATE_REDIS_URL
            elif f.name == "log_level":
                value = value.upper()
            elif f.name == "log_format":
                value = value.lower()
            values[f.name] = value
    return Settings(**values)


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, type) for every setting, for ``deskmate config``."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((f"DESKMATE_{f.name.upper()}", "" if default is None else shown,
                     _field_kind(f).__name__))
    return rows


def configure_logging(level: str, *, fmt: str = "text", redact: bool = True) -> None:
    """Log to stderr: see :func:`bot.logs.configure` (secrets masked, session ids attached)."""
    from bot import logs

    logs.configure(level, fmt=fmt, redact=redact)


