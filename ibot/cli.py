"""The ``ibot`` command: one entry point, one sub-command per task.

Every error a user can cause ends as one line on stderr (``ibot: error: ...``) and exit status 2;
set ``IBOT_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ibot.commands import COMMANDS, Formatter, load_all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibot", description="iBOT: Image BERT pre-training with online tokenizer",
                                     formatter_class=Formatter)
    from ibot import __version__

    load_all()
    parser.add_argument("--version", action="version", version=f"ibot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter)
        add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # ``key=value`` overrides may stand between options: argparse leaves those over
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 1
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("ibot: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        if os.environ.get("IBOT_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ibot: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
