"""``deskmate run``: start the chat server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bot import config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="start the chat server",
        description="Start the chat server (HTTP, /ws/chat) with a bot project. Flags override "
                    "the DESKMATE_* environment variables.")
    p.add_argument("--host", help="interface to bind (DESKMATE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (DESKMATE_PORT, default 8080; 0 = any free)")
    p.add_argument("--project", type=Path, help="bot project directory (DESKMATE_PROJECT)")
    p.add_argument("--redis-url", help="Redis URL (DESKMATE_REDIS_URL or REDIS_URL); "
                                       "unset: embedded Redis under --data-dir")
    p.add_argument("--data-dir", type=Path, help="local state directory (DESKMATE_DATA_DIR)")
    p.add_argument("--log-level", type=str.upper, choices=config.LOG_LEVELS,
                   help="DESKMATE_LOG_LEVEL")
    p.set_defaults(handler=_run)

    c = sub.add_parser("config", help="print the effective settings",
                       description="Print every setting with its value after environment "
                                   "variables are applied.")
    c.set_defaults(handler=_show_config)


def _run(args: argparse.Namespace) -> int:
    from bot.server import run

    settings = config.from_env().replace(
        host=args.host, port=args.port, project=args.project, redis_url=args.redis_url,
        data_dir=args.data_dir, log_level=args.log_level)
    config.configure_logging(settings.log_level, fmt=settings.log_format, redact=settings.redact_pii)
    run(settings)
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from bot.security import mask_secrets

    settings = config.from_env()
    for name, _default, kind in config.documented():
        field = name.removeprefix("DESKMATE_").lower()
        value = getattr(settings, field)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        print(f"{name:<32} {kind:<6} {mask_secrets(shown)}")  # no Redis password on screen
    return 0
