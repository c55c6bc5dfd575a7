"""``deskmate agent``: manage support-agent accounts (add, list, remove, reset).

The commands use the Redis that ``deskmate run`` would: ``REDIS_URL`` /
``DESKMATE_REDIS_URL`` when set, else the embedded Redis under
``DESKMATE_DATA_DIR`` — the running server's, when one is up, or one started
for the command and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bot import config
from bot.agents import ROLES, Agents
from bot.config import Settings
from bot.embedded_redis import EmbeddedRedis
from bot.keys import Keys


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "agent", help="manage support-agent accounts",
        description="Manage the accounts that sign in to the agent console (/agent). "
                    "Passwords are printed once and stored only as salted scrypt hashes.")
    p.add_argument("--redis-url", help="Redis URL (DESKMATE_REDIS_URL or REDIS_URL); "
                                       "unset: the embedded Redis under --data-dir")
    p.add_argument("--data-dir", type=Path, help="local state directory (DESKMATE_DATA_DIR)")
    commands = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    add = commands.add_parser("add", help="create an agent and print its password once")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="agent",
                     help="admin: may also assign conversations to agents (default: agent)")
    commands.add_parser("list", help="list agents")
    remove = commands.add_parser("remove", help="delete an agent and sign it out everywhere")
    remove.add_argument("name")
    reset = commands.add_parser("reset", help="print a new password; signs the agent out")
    reset.add_argument("name")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    settings = config.from_env().replace(redis_url=args.redis_url, data_dir=args.data_dir)
    with _redis_url(settings) as url:
        return asyncio.run(_command(args, url, settings))


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str]:
    """The configured Redis; else the embedded one: the server's if it is up, else our own."""
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    if embedded.socket.exists() and _answers(embedded.url):
        yield embedded.url  # `deskmate run` is serving this data directory
        return
    with embedded:
        yield embedded.url


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


async def _command(args: argparse.Namespace, url: str, settings: Settings) -> int:
    client = aioredis.from_url(url, decode_responses=True)
    agents = Agents(client, Keys(settings.key_prefix), token_ttl=settings.agent_token_ttl)
    try:
        if args.agent_command == "add":
            password = await agents.add(args.name, args.role)
            print(f"added {args.role} {args.name!r}; the password is shown only this once:")
            print(f"password: {password}")
        elif args.agent_command == "list":
            found = await agents.list()
            if not found:
                print("no agents; add one with: deskmate agent add NAME")
            for agent in found:
                created = datetime.datetime.fromtimestamp(agent.created_at).strftime("%Y-%m-%d %H:%M")
                print(f"{agent.name:<24} {agent.role:<6} created {created}")
        elif args.agent_command == "remove":
            await agents.remove(args.name)
            print(f"removed {args.name!r}; its console logins are revoked")
        elif args.agent_command == "reset":
            password = await agents.reset(args.name)
            print(f"new password for {args.name!r} (its console logins are revoked):")
            print(f"password: {password}")
        return 0
    finally:
        await client.aclose()
