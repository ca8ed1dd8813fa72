"""Command-line wiring of `suppress`, `web` and `intake`.

Kept apart from the modules that do the work so that building the parser
imports neither aiohttp nor the intake machinery (`aup-milter run` stays lean).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from aupmilter.config import RedisSettings


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    from aupmilter.cli import suppress as suppresscli

    suppresscli.add_parser(commands, config_option)
    web = commands.add_parser(
        "web", help="run the one-click unsubscribe web service (RFC 8058) in the foreground"
    )
    config_option(web)
    intake = commands.add_parser(
        "intake",
        help="read one unsubscribe message or report on stdin (Postfix pipe) and act on it",
    )
    config_option(intake)
    intake.add_argument(
        "--recipient",
        metavar="ADDRESS",
        help="the envelope recipient (Postfix: ${recipient}); default: from the headers",
    )
    intake.add_argument(
        "--reports",
        action="store_true",
        help="the message is a complaint or bounce report (Postfix: the aup-reports service)",
    )


def run(args: argparse.Namespace, redis_settings: Callable[[], RedisSettings]) -> int:
    if args.command == "web":
        from aupmilter.unsubscribe import web

        return web.main(args)
    if args.command == "intake":
        from aupmilter.unsubscribe import intake

        return intake.main(args)
    from aupmilter.cli import suppress as suppresscli

    return suppresscli.run(args, redis_settings())
