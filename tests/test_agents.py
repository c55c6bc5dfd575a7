"""Agent accounts and logins against the real Redis, and the `deskmate agent` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.agents import (
    LOGIN_ATTEMPTS,
    AgentError,
    Agents,
    LoginRefused,
    check_password,
    hash_password,
    token_digest,
)
from bot.errors import StoreError
from bot.keys import Keys
from tests.conftest import ROOT
from tests.fakes import free_port


@pytest.fixture
async def agents(redis_url: str, key_prefix: str) -> AsyncIterator[Agents]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield Agents(client, Keys(key_prefix), token_ttl=60)
    await client.aclose()


def dump(sync_redis: redis.Redis, prefix: str) -> str:
    """Every key and value under ``prefix``, as one string to search."""
    out = []
    for key in sync_redis.scan_iter(match=f"{prefix}*"):
        kind = sync_redis.type(key)
        value = {"hash": sync_redis.hgetall, "string": sync_redis.get, "set": sync_redis.smembers,
                 }.get(kind, lambda k: "")(key)
        out.append(f"{key}={value}")
    return "\n".join(out)


async def test_password_and_tokens_are_stored_only_as_hashes(
        agents: Agents, sync_redis: redis.Redis, key_prefix: str) -> None:
    password = await agents.add("anna", "admin")
    token, expires_at, agent = await agents.login("anna", password)
    assert (agent.name, agent.role, agent.is_admin) == ("anna", "admin", True)
    everything = dump(sync_redis, key_prefix)
    assert password not in everything and token not in everything
    stored = sync_redis.hget(Keys(key_prefix).agent("anna"), "password") or ""
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1") and len(salt) == 24  # 16 bytes
    assert check_password(password, stored) and not check_password(password + "x", stored)
    generation = sync_redis.hget(Keys(key_prefix).agent("anna"), "generation")
    stored_token = sync_redis.get(Keys(key_prefix).agent_token(token_digest(token)))
    assert generation and stored_token == f"anna:{generation}"  # name and account generation
    assert 0 < sync_redis.ttl(Keys(key_prefix).agent_token(token_digest(token))) <= 60
    assert time.time() + 50 < expires_at <= time.time() + 60
    assert await agents.verify(token) == agent


async def test_login_refuses_bad_password_unknown_name_and_bad_tokens(agents: Agents) -> None:
    password = await agents.add("bob")
    for name, guess in (("bob", "wrong"), ("nobody", password), ("bad:name", password)):
        with pytest.raises(LoginRefused) as refused:
            await agents.login(name, guess)
        assert refused.value.code == "unauthorized"
    assert await agents.verify("not-a-token") is None
    assert await agents.verify("") is None
    with pytest.raises(AgentError):
        await agents.add("bob")
    with pytest.raises(AgentError):
        await agents.add("has space")
    with pytest.raises(AgentError):
        await agents.add("carol", role="root")


async def test_token_expires(redis_url: str, key_prefix: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        short = Agents(client, Keys(key_prefix), token_ttl=1)
        password = await short.add("dora")
        token, _, _ = await short.login("dora", password)
        assert await short.verify(token) is not None
        await asyncio.sleep(1.3)
        assert await short.verify(token) is None
    finally:
        await client.aclose()


async def test_remove_and_reset_revoke_tokens(agents: Agents) -> None:
    password = await agents.add("erin")
    first, _, _ = await agents.login("erin", password)
    second, _, _ = await agents.login("erin", password)
    new_password = await agents.reset("erin")
    assert await agents.verify(first) is None and await agents.verify(second) is None
    with pytest.raises(LoginRefused):
        await agents.login("erin", password)
    token, _, _ = await agents.login("erin", new_password)
    assert await agents.verify(token) is not None
    await agents.remove("erin")
    assert await agents.verify(token) is None
    assert [a.name for a in await agents.list()] == []
    with pytest.raises(AgentError):
        await agents.remove("erin")


async def test_a_reset_during_a_login_leaves_no_live_token(
        agents: Agents, monkeypatch: pytest.MonkeyPatch, sync_redis: redis.Redis, key_prefix: str) -> None:
    password = await agents.add("ivan")
    loop = asyncio.get_running_loop()

    def reset_meanwhile(guess: str, stored: str) -> bool:
        # Runs in the login's thread, after the login read the old hash.
        right = check_password(guess, stored)
        asyncio.run_coroutine_threadsafe(agents.reset("ivan"), loop).result(timeout=30)
        return right

    monkeypatch.setattr("bot.agents.check_password", reset_meanwhile)
    with pytest.raises(LoginRefused) as refused:
        await agents.login("ivan", password)
    assert refused.value.code == "unauthorized"
    assert not sync_redis.exists(Keys(key_prefix).agent_tokens("ivan"))
    assert not list(sync_redis.scan_iter(match=Keys(key_prefix).agent_token("*")))


def after_each_command(monkeypatch: pytest.MonkeyPatch, agents: Agents,
                       then: Callable[[tuple[Any, ...]], Awaitable[None]]) -> None:
    """Run ``then`` after every command ``agents`` sends on its own (a script is one
    command; a MULTI block is not seen), as if another instance acted in between."""
    send = agents.redis.execute_command

    async def and_then(*args: Any, **options: Any) -> Any:
        out = await send(*args, **options)
        await then(args)
        return out

    monkeypatch.setattr(agents.redis, "execute_command", and_then)


async def test_a_failure_while_adding_leaves_no_half_account(
        agents: Agents, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis goes away right after the first command of an add: what was written is a whole
    account (the add's one script) or nothing, never a name that no command can use."""
    await agents.add("warm-up")  # loads the script, so the add below is one EVALSHA

    async def connection_lost(args: tuple[Any, ...]) -> None:
        raise redis.ConnectionError("Connection closed by server.")

    after_each_command(monkeypatch, agents, connection_lost)
    with pytest.raises(StoreError):
        await agents.add("mia", "admin")
    monkeypatch.undo()
    agent = await agents.get("mia")
    assert agent is not None and agent.role == "admin"
    assert "mia" in [a.name for a in await agents.list()]
    await agents.reset("mia")
    await agents.remove("mia")
    await agents.add("mia")


async def test_a_half_written_account_does_not_block_its_name(
        agents: Agents, sync_redis: redis.Redis, key_prefix: str) -> None:
    """An older deskmate wrote an account in two steps and could leave only its role: that
    is no account, so adding the name works, and removing it cleans the leftover up."""
    keys = Keys(key_prefix)
    sync_redis.hset(keys.agent("nina"), "role", "agent")
    password = await agents.add("nina", "admin")
    _, _, agent = await agents.login("nina", password)
    assert agent.role == "admin" and [a.name for a in await agents.list()] == ["nina"]

    sync_redis.hset(keys.agent("omar"), "role", "agent")
    assert await agents.get("omar") is None
    await agents.remove("omar")
    assert not sync_redis.exists(keys.agent("omar"))
    with pytest.raises(AgentError):
        await agents.remove("omar")


async def test_a_login_during_a_removal_leaves_no_live_token(
        agents: Agents, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
        sync_redis: redis.Redis) -> None:
    password = await agents.add("pia")
    client = aioredis.from_url(redis_url, decode_responses=True)
    other_instance = Agents(client, Keys(key_prefix), token_ttl=60)
    tokens: list[str] = []

    async def log_in(args: tuple[Any, ...]) -> None:
        with contextlib.suppress(LoginRefused):
            tokens.append((await other_instance.login("pia", password))[0])

    try:
        after_each_command(monkeypatch, agents, log_in)
        await agents.remove("pia")
        monkeypatch.undo()
        await agents.add("pia", "admin")
        for token in tokens:
            assert await agents.verify(token) is None
        assert not list(sync_redis.scan_iter(match=Keys(key_prefix).agent_token("*")))
    finally:
        await client.aclose()


async def test_a_token_never_opens_a_later_account_of_the_same_name(
        agents: Agents, sync_redis: redis.Redis, key_prefix: str) -> None:
    """Even a token key that outlived its account (written before revocation was one
    script, or restored from a backup) is bound to the account it was granted for."""
    password = await agents.add("quinn")
    token, _, _ = await agents.login("quinn", password)
    key = Keys(key_prefix).agent_token(token_digest(token))
    value = sync_redis.get(key)
    await agents.remove("quinn")
    for kept in (value, "quinn"):  # this version's token, and one from before generations
        sync_redis.set(key, kept or "", ex=60)
        await agents.add("quinn", "admin")
        assert await agents.verify(token) is None
        await agents.remove("quinn")


async def test_a_reset_racing_a_removal_does_not_bring_the_account_back(
        agents: Agents, monkeypatch: pytest.MonkeyPatch, sync_redis: redis.Redis, key_prefix: str) -> None:
    await agents.add("rosa")
    loop = asyncio.get_running_loop()

    def remove_meanwhile(password: str) -> str:
        # Runs in the reset's thread, after the reset checked that the account exists.
        asyncio.run_coroutine_threadsafe(agents.remove("rosa"), loop).result(timeout=30)
        return hash_password(password)

    monkeypatch.setattr("bot.agents.hash_password", remove_meanwhile)
    with pytest.raises(AgentError):
        await agents.reset("rosa")
    assert await agents.get("rosa") is None
    assert not sync_redis.exists(Keys(key_prefix).agent("rosa"))


async def test_login_attempts_are_throttled_per_name(agents: Agents) -> None:
    password = await agents.add("fred")
    await agents.add("gina")
    for _ in range(LOGIN_ATTEMPTS):
        with pytest.raises(LoginRefused):
            await agents.login("fred", "guess")
    # Even the right password is refused until the window passes...
    with pytest.raises(LoginRefused) as refused:
        await agents.login("fred", password)
    assert refused.value.code == "rate_limited"
    # ...for that name only.
    with pytest.raises(LoginRefused) as other:
        await agents.login("gina", "guess")
    assert other.value.code == "unauthorized"


async def test_redis_down_is_a_store_error(key_prefix: str) -> None:
    """Every call that reaches Redis raises StoreError (which the sockets answer with
    ``unavailable``), never redis-py's own exceptions."""
    # Nothing listens on the port; no retries, so each call fails at once.
    client = aioredis.Redis(port=free_port(), decode_responses=True, retry=Retry(NoBackoff(), 0))
    agents = Agents(client, Keys(key_prefix))
    try:
        calls = {"login": lambda: agents.login("anna", "secret"),
                 "expires_at": lambda: agents.expires_at("a-token"),
                 "logout": lambda: agents.logout("a-token"), "list": agents.list,
                 "verify": lambda: agents.verify("a-token"), "add": lambda: agents.add("anna")}
        for name, call in calls.items():
            with pytest.raises(StoreError):
                await call()
                pytest.fail(name)
    finally:
        await client.aclose()


def cli(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url,
           "DESKMATE_KEY_PREFIX": prefix}
    env.pop("DESKMATE_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "bot.cli", "agent", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_cli_add_list_reset_remove(redis_url: str, key_prefix: str, agents: Agents,
                                         sync_redis: redis.Redis) -> None:
    added = await asyncio.to_thread(cli, redis_url, key_prefix, "add", "hana", "--role", "admin")
    assert added.returncode == 0, added.stderr
    password = re.search(r"^password: (\S+)$", added.stdout, re.M)
    assert password
    _, _, agent = await agents.login("hana", password.group(1))
    assert agent.role == "admin"
    assert password.group(1) not in dump(sync_redis, key_prefix)

    again = await asyncio.to_thread(cli, redis_url, key_prefix, "add", "hana")
    assert again.returncode == 1 and "already exists" in again.stderr

    listed = await asyncio.to_thread(cli, redis_url, key_prefix, "list")
    assert listed.returncode == 0 and re.search(r"^hana\s+admin\s", listed.stdout, re.M)

    reset = await asyncio.to_thread(cli, redis_url, key_prefix, "reset", "hana")
    new_password = re.search(r"^password: (\S+)$", reset.stdout, re.M)
    assert reset.returncode == 0 and new_password and new_password.group(1) != password.group(1)
    with pytest.raises(LoginRefused):
        await agents.login("hana", password.group(1))
    token, _, _ = await agents.login("hana", new_password.group(1))

    removed = await asyncio.to_thread(cli, redis_url, key_prefix, "remove", "hana")
    assert removed.returncode == 0
    assert await agents.verify(token) is None
    missing = await asyncio.to_thread(cli, redis_url, key_prefix, "remove", "hana")
    assert missing.returncode == 1 and "no agent named" in missing.stderr
