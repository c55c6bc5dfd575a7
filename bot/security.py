"""What the edge checks before a frame or a log line goes further.

* :class:`OriginPolicy` — the browser ``Origin`` allow-list of both sockets
  (``DESKMATE_ALLOWED_ORIGINS``): a page on another site cannot open a socket in a
  visitor's browser (cross-site websocket hijacking).
* :func:`client_address` and :class:`AddressLimits` — who a connection comes from
  (``X-Forwarded-For`` only with ``DESKMATE_TRUST_PROXY``), and the per-address frame
  budget and connection cap, counted in this process.
* :class:`RateLimiter` — the token bucket both use.
* :func:`mask_secrets` and :class:`LogScrubber` — tokens, passwords, API keys and URL
  credentials masked in every log line, and personal data too (``dialogue.redact``).

Pure logic, no I/O: ``bot.server`` and ``bot.chat`` apply it; ``docs/security.md`` is the
threat model.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from dialogue.redact import redact_pii

PRUNE_EVERY = 1024  # new addresses between sweeps of idle, refilled buckets
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class RateLimiter:
    """Token bucket: ``rate`` frames per ``window`` seconds, bursts up to ``rate``."""

    def __init__(self, rate: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(rate)
        self.per_second = rate / window
        self.tokens = float(rate)
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now

    def allow(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def full(self) -> bool:
        """True when the bucket has refilled: forgetting it loses nothing."""
        self._refill()
        return self.tokens >= self.capacity


# -- Origin -------------------------------------------------------------------

def _netloc(scheme: str, host: str, port: int | None) -> str:
    """``host[:port]`` with the scheme's default port left out, as browsers write it."""
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port; None if unparsable."""
    origin = origin.strip().lower()
    if origin == "null":
        return origin
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if "" in parts.hostname.removesuffix(".").split(".") or port == 0:
        return None  # "shop..example", ".example": an empty label; port 0 is no port
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{_netloc(parts.scheme, host, port)}"


def normalize_allowed(entry: str) -> str | None:
    """An allow-list entry normalised as :func:`normalize_origin` does, ``*.`` kept; None
    if unparsable (a bad port, no host): ``bot.config`` refuses such an entry at start."""
    wildcard = "://*." in entry
    # A wildcard is normalised like an exact origin (case, default port) with a stand-in
    # for its first label.
    normal = normalize_origin(entry.replace("://*.", "://wildcard.", 1) if wildcard else entry)
    if normal is None or not wildcard:
        return normal
    normal = normal.replace("://wildcard.", "://*.", 1)
    return None if normal.split("://*.", 1)[1][:1] in ("", ":") else normal  # "https://*.:8080"


class OriginPolicy:
    """Which browser pages may open a socket.

    An empty list allows every origin (the default, for a first run; set it in
    production). A request without ``Origin`` is not from a browser page — a load
    generator, a server-side integration — and is let through: the header protects
    browser visitors, it does not authenticate anyone. A page served by this server
    itself (``/demo``, ``/agent``: the ``Origin`` names the ``Host`` it connects to) is
    always allowed, so the console keeps working whatever the list says.
    ``https://*.example.com`` allows every subdomain of example.com (not example.com).
    An entry that is not an origin raises ``ValueError``: skipping it could leave the list
    empty, and an empty list allows everyone.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.suffixes: list[tuple[str, str]] = []  # (scheme://, .domain[:port])
        entries = list(allowed)
        for entry in entries:
            normal = normalize_allowed(entry)
            if normal is None:
                raise ValueError(f"not an origin in the allow-list: {entry!r}")
            if "://*." in normal:  # matched by what follows the first label
                scheme, suffix = normal.split("://*", 1)
                self.suffixes.append((scheme + "://", suffix))
            else:
                self.exact.add(normal)
        self.open = not entries

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        if self.open or origin is None:
            return True
        normal = normalize_origin(origin)
        if normal is None:
            return False
        if normal in self.exact:
            return True
        if host and normal != "null" and normal.split("://", 1)[1] == _host_netloc(normal, host):
            return True  # same origin: a page this server served
        return any(normal.startswith(scheme) and normal.endswith(suffix)
                   and len(normal) > len(scheme) + len(suffix)
                   for scheme, suffix in self.suffixes)


def _host_netloc(origin: str, host: str) -> str:
    """The ``Host`` header as the netloc a browser would put in an ``Origin`` of that scheme."""
    scheme = origin.split("://", 1)[0]
    host = host.strip().lower()
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if name and port.isdigit():
        return _netloc(scheme, name, int(port))
    return host


# -- client addresses -----------------------------------------------------------

def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: object, headers: Mapping[str, str] | None, *, trust_proxy: bool) -> str:
    """The address a connection comes from, as a limit key.

    With ``trust_proxy``, the last entry of ``X-Forwarded-For``: the address your proxy
    saw (entries before it are whatever the client claimed, and a client can send the
    header itself). Without it the header is ignored: anyone could send one. IPv6
    addresses count by their /64 network, which one subscriber usually holds whole.
    """
    raw: str | None = None
    if trust_proxy and headers is not None:
        # A header sent twice is one list (RFC 9110 §5.3): the last entry of the last copy
        # is the one the proxy appended. websockets' Headers.get() raises on a second copy.
        get_all = getattr(headers, "get_all", None)
        copies: list[str] = get_all("X-Forwarded-For") if get_all else [headers.get("X-Forwarded-For", "")]
        if copies and copies[-1]:
            raw = copies[-1].split(",")[-1]
    if raw is None:
        raw = peer[0] if isinstance(peer, tuple) and peer else (peer if isinstance(peer, str) else "")
    ip = _parse_ip(str(raw))
    if ip is None:
        return str(raw) or "unknown"  # a Unix socket: one shared budget
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressLimits:
    """Per-address frame budget and connection count, for one server process.

    In-process on purpose: a shared count in Redis would cost a round trip on every
    frame and fail closed (or open) with Redis. With N instances behind a load balancer
    one address may get up to N times the budget; ``docs/security.md`` says so.
    ``rate`` 0 or ``max_connections`` 0 turns that limit off.
    """

    def __init__(self, *, rate: int, window: float, max_connections: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.window = window
        self.max_connections = max_connections
        self.clock = clock
        self.buckets: dict[str, RateLimiter] = {}
        self.connections: dict[str, int] = {}
        self._added = 0

    def open(self, key: str) -> bool:
        """Count a new connection from ``key``; False (nothing counted) when at the cap."""
        count = self.connections.get(key, 0)
        if self.max_connections and count >= self.max_connections:
            return False
        self.connections[key] = count + 1
        return True

    def close(self, key: str) -> None:
        count = self.connections.get(key, 0) - 1
        if count > 0:
            self.connections[key] = count
        else:
            self.connections.pop(key, None)

    def allow(self, key: str) -> bool:
        """Take one frame from ``key``'s budget; False when it is spent."""
        if not self.rate:
            return True
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = RateLimiter(self.rate, self.window, clock=self.clock)
            self._added += 1
            if self._added % PRUNE_EVERY == 0:
                self._prune()
        return bucket.allow()

    def _prune(self) -> None:
        # A refilled bucket is the same as a new one: dropping it keeps memory bounded by
        # the addresses active within one window.
        for key in [k for k, b in self.buckets.items() if b.full()]:
            del self.buckets[key]


# -- secrets in logs -------------------------------------------------------------

_SECRET_KEYS = (r"(?:token|password|passwd|passphrase|secret|(?:api|access|secret|private)[_-]?key"
                r"|authorization|cookie|credentials?)")
# An HTTP authentication scheme, written before the credentials in an Authorization header.
_AUTH_SCHEMES = r"(?:bearer|basic|digest|negotiate|ntlm|token|apikey|dpop|hoba|mutual|aws4-hmac-sha256)"
# "token": "…" / token=… / 'password': '…' — a key name that ends in a secret's name
# (access_token, client_secret, X-API-Key, Proxy-Authorization, DESKMATE_LM_API_KEY), its
# value masked, with the scheme of an Authorization value ("Basic …") taken as part of it.
_KEY_VALUE = re.compile(
    rf"""(?ix)(?<![\w-])(["']?[\w-]*?{_SECRET_KEYS}["']?\s*[:=]\s*)
         (?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|(?:{_AUTH_SCHEMES}\s+)?[^\s,;&}}\])"']+)""")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
MASK = "***"


def _mask_value(match: re.Match[str]) -> str:
    value = match.group(0)[len(match.group(1)):]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{quote}{MASK}{quote}"


def mask_secrets(text: str) -> str:
    """``text`` with the values of token/password/secret/api-key fields, bearer tokens and
    URL passwords replaced by ``***``."""
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)


class LogScrubber(logging.Filter):
    """A handler filter: every record leaves with secrets masked and, with ``redact``,
    personal data replaced (:func:`dialogue.redact.redact_pii`), tracebacks included.

    A backstop: deskmate's own code never logs a token or a password (a test checks),
    but an exception message or a library may."""

    def __init__(self, *, redact: bool = True) -> None:
        super().__init__()
        self.redact = redact

    def scrub(self, text: str) -> str:
        text = mask_secrets(text)
        return redact_pii(text) if self.redact else text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: keep what there is, and never raise from a filter
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True
