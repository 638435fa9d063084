"""The `churn-stream` command: one sub-command per job, each delegating to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from stream.settings import Settings

# Each settings field becomes a --flag (dashes for underscores) that overrides CHURN_*.
_SETTINGS_FLAGS = tuple(Settings.model_fields)


def worker_command() -> list[str]:
    """argv of a `churn-stream worker` child process running the same code as this one.

    `-P`: without it, `-m` puts the working directory first on the child's path, so a
    bench or demo started from another checkout would run that checkout's workers."""
    return [sys.executable, "-P", "-m", "stream.cli", "worker"]


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override CHURN_* environment variables)")
    for name, field in Settings.model_fields.items():
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            default=None,
            help=f"{field.description} [env CHURN_{name.upper()}]",
        )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value
        for name in _SETTINGS_FLAGS
        if (value := getattr(args, f"setting_{name}", None)) is not None
    }
    if "dimensions" in overrides:
        overrides["dimensions"] = Settings._split_dimensions(overrides["dimensions"])
    return Settings(**overrides)


Command = Callable[[argparse.Namespace], int]


def _commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], Command]]]:
    # Imported lazily so that `churn-stream batch` never loads faust.
    from stream import commands

    return commands.REGISTRY


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported and configured (fast start)."""
    parser = argparse.ArgumentParser(prog="churn-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure) in _commands().items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            command_parser.set_defaults(handler=configure(command_parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in arguments if not word.startswith("-")), None)
    args = build_parser(command).parse_args(arguments)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
