"""The ``deskmate`` command line.

Each area of the product registers its own sub-commands; this module only
assembles them, so ``bot`` does not import torch unless a model command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bot.errors import ConfigError, DeskmateError

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Registrar]:
    from bot import cli_agents, cli_marketing, cli_project, cli_report, cli_server

    found: list[Registrar] = [cli_server.register, cli_project.register, cli_agents.register,
                              cli_report.register]
    found.append(cli_marketing.register)
    try:
        from model import cli as model_cli
    except ImportError:  # model commands not installed in this tree
        pass
    else:
        found.append(model_cli.register)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deskmate",
        description="Self-hosted customer-support and sales chatbot.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"deskmate: configuration error: {exc}", file=sys.stderr)
        return 2
    except DeskmateError as exc:
        print(f"deskmate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger("deskmate").info("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
