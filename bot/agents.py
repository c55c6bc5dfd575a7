"""Support-agent accounts and console logins, in Redis next to the conversations.

An account is a hash (role, salted scrypt hash of the password, created_at,
generation); the password itself is never stored and is shown once, when it is
made. A login hands out a random token; Redis keeps only its SHA-256, with a
TTL, so a copy of the database cannot be replayed as a login. Removing an agent
or resetting its password revokes every token it holds, and a token opens only
the account generation it was granted for: never a later account of the same
name. Each change to an account is one Lua script (``bot.lua``). Key layout:
``bot.keys``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.errors import DeskmateError, StoreError
from bot.keys import Keys
from bot.lua import ADD_AGENT, GRANT, REMOVE_AGENT, RESET_AGENT

ROLES = ("agent", "admin")
NAME = re.compile(r"^[\w.-]{1,64}$")  # no ':' and no spaces: names are parts of keys
# scrypt's interactive-login parameters (RFC 7914 §2): 16 MiB and ~50 ms per hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
LOGIN_ATTEMPTS = 5  # per name per LOGIN_WINDOW, counted before the password is checked
LOGIN_WINDOW = 60  # seconds


class AgentError(DeskmateError):
    """An account operation was refused (bad name, unknown or existing agent)."""


class LoginRefused(DeskmateError):
    """A login failed; ``code`` is ``unauthorized`` or ``rate_limited``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Agent:
    name: str
    role: str  # "agent" or "admin"
    created_at: float = 0.0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), self-describing so parameters can change later."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (compared in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# Checked against when the name is unknown, so a login takes as long either way and
# its timing does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _generation() -> str:
    """A fresh account generation: new with every account and every password reset."""
    return secrets.token_hex(8)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AgentError(f"bad agent name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


@contextlib.contextmanager
def _redis(doing: str) -> Iterator[None]:
    """Turn a Redis failure into :class:`StoreError`, as ``bot.store`` does: the sockets
    answer it with ``unavailable`` and the CLI with a one-line error, not a traceback."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not {doing}: {exc}") from exc


class Agents:
    """Agent accounts and login tokens; one per process (or per CLI command)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, token_ttl: int = 12 * 3600) -> None:
        self.redis: Any = client  # decode_responses=True, as in bot.store
        self.keys = keys
        self.token_ttl = token_ttl
        self._grant = client.register_script(GRANT)
        self._add = client.register_script(ADD_AGENT)
        self._reset = client.register_script(RESET_AGENT)
        self._remove = client.register_script(REMOVE_AGENT)

    # -- accounts -------------------------------------------------------------

    async def add(self, name: str, role: str = "agent") -> str:
        """Create an account; returns its password (shown once, never stored)."""
        check_name(name)
        if role not in ROLES:
            raise AgentError(f"bad role {role!r}: use one of {', '.join(ROLES)}")
        password = secrets.token_urlsafe(12)
        hashed = await asyncio.to_thread(hash_password, password)
        with _redis("add agent"):
            # One script: two concurrent adds of one name cannot both win, and a failure
            # cannot leave half an account that blocks the name.
            added = await self._add(
                keys=[self.keys.agent(name), self.keys.agent_index(), self.keys.agent_tokens(name)],
                args=[name, role, hashed, repr(time.time()), _generation(), self._token_prefix])
        if not added:
            raise AgentError(f"agent {name!r} already exists")
        return password

    async def get(self, name: str) -> Agent | None:
        found = await self._load(name)
        return found[0] if found else None

    async def _load(self, name: str) -> tuple[Agent, str] | None:
        """The account and its generation ('' for one made before generations existed)."""
        if not NAME.match(name):
            return None
        with _redis("read agent"):
            record = await self.redis.hgetall(self.keys.agent(name))
        if not record or "password" not in record:
            return None
        agent = Agent(name, record.get("role", "agent"), float(record.get("created_at") or 0))
        return agent, record.get("generation", "")

    async def list(self) -> list[Agent]:
        """Every agent, by name."""
        with _redis("list agents"):
            names = sorted(await self.redis.smembers(self.keys.agent_index()))
        found = [await self.get(name) for name in names]
        return [agent for agent in found if agent is not None]

    async def remove(self, name: str) -> None:
        """Delete the account and revoke its tokens (a half-written account too)."""
        if not NAME.match(name):
            raise AgentError(f"no agent named {name!r}")
        with _redis("remove agent"):
            found = await self._remove(
                keys=[self.keys.agent(name), self.keys.agent_tokens(name), self.keys.agent_index()],
                args=[name, self._token_prefix])
        if not found:
            raise AgentError(f"no agent named {name!r}")

    async def reset(self, name: str) -> str:
        """A new password for ``name`` (returned once); its current logins are revoked."""
        if await self.get(name) is None:  # before the ~50 ms of hashing
            raise AgentError(f"no agent named {name!r}")
        password = secrets.token_urlsafe(12)
        hashed = await asyncio.to_thread(hash_password, password)
        # The new hash and the revocation in one step: a login with the old password can
        # no longer store a token (GRANT checks the hash), and none stored before survives.
        with _redis("reset password"):
            done = await self._reset(keys=[self.keys.agent(name), self.keys.agent_tokens(name)],
                                     args=[hashed, _generation(), self._token_prefix])
        if not done:  # removed while the password was being hashed
            raise AgentError(f"no agent named {name!r}")
        return password

    @property
    def _token_prefix(self) -> str:
        """What every token key starts with; the scripts add the digest."""
        return self.keys.agent_token("")

    # -- logins ---------------------------------------------------------------

    async def login(self, name: str, password: str) -> tuple[str, float, Agent]:
        """(token, expires_at, agent) for a right password; raises :class:`LoginRefused`.

        At most ``LOGIN_ATTEMPTS`` tries per name per ``LOGIN_WINDOW`` seconds, counted
        whether the name exists or not."""
        if NAME.match(name):
            with _redis("check login"):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.incr(self.keys.agent_logins(name))
                    pipe.expire(self.keys.agent_logins(name), LOGIN_WINDOW, nx=True)
                    attempts, _ = await pipe.execute()
                if int(attempts) > LOGIN_ATTEMPTS:
                    raise LoginRefused("rate_limited", "too many login attempts; wait a minute")
                stored = await self.redis.hget(self.keys.agent(name), "password")
        else:
            stored = None
        ok = await asyncio.to_thread(check_password, password, stored or _DUMMY_HASH)
        agent = await self.get(name) if ok and stored else None
        if agent is None:
            raise LoginRefused("unauthorized", "wrong name or password")
        token = secrets.token_urlsafe(32)
        digest = token_digest(token)
        expires_at = time.time() + self.token_ttl
        with _redis("store login"):
            # The check took ~50 ms (scrypt): a reset meanwhile must win.
            granted = await self._grant(
                keys=[self.keys.agent(name), self.keys.agent_token(digest), self.keys.agent_tokens(name)],
                args=[stored, name, self.token_ttl, digest])
        if not granted:
            raise LoginRefused("unauthorized", "wrong name or password")
        return token, expires_at, agent

    async def verify(self, token: str) -> Agent | None:
        """The agent a live token belongs to; None if it is unknown, expired or revoked."""
        if not token or len(token) > 256:
            return None
        with _redis("check token"):
            value = await self.redis.get(self.keys.agent_token(token_digest(token)))
        if value is None:
            return None
        name, _, generation = value.partition(":")  # no ':' (older tokens): generation ''
        found = await self._load(name)
        # None once the account is gone, and for a later account of the same name.
        if found is None or found[1] != generation:
            return None
        return found[0]

    async def expires_at(self, token: str) -> float | None:
        """When ``token`` expires (seconds since the epoch), or None if it is not live."""
        with _redis("check token"):
            ttl = await self.redis.pttl(self.keys.agent_token(token_digest(token)))
        return time.time() + int(ttl) / 1000 if int(ttl) > 0 else None

    async def logout(self, token: str) -> None:
        with _redis("log out"):
            await self.redis.delete(self.keys.agent_token(token_digest(token)))
