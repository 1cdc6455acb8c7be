"""The ``ibot`` command: one entry point, one sub-command per task.

Every error a user can cause ends as one line on stderr (``ibot: error: ...``) and exit status 2:
misspelt commands and options come with a suggestion, running out of memory with the option
that lowers the batch. Set ``IBOT_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

from ibot.commands import COMMANDS, Formatter, load_all

# how ``ibot --help`` groups the sub-commands; others are listed under "other"
COMMAND_GROUPS = {
    "pre-training": ("pretrain",),
    "evaluation": ("knn", "linear", "finetune", "cluster", "semisup", "segment"),
    "deployment": ("convert", "export", "infer"),
    "inspection": ("visualize", "plot"),
}
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "Cannot allocate memory", "not enough memory")


def suggest(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line with a suggestion (Python 3.11's have neither)."""

    def add_subparsers(self, **kwargs):
        self.subcommands = super().add_subparsers(**kwargs)
        return self.subcommands

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # "argument COMMAND: invalid choice: 'pretrian' (choose from 'pretrain', ...)"
            word, options = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
            message = (f"{message[:choice.start()]}invalid choice '{word}'{suggest(word, options)} "
                       f"(choose from {', '.join(options)})")
        self.exit(2, f"ibot: error: {message} (see '{self.prog} --help')\n")

    def unrecognized(self, extra: Sequence[str]) -> NoReturn:
        """Error for arguments no parser took, suggesting the option each misspelt one meant."""
        hints = [suggest(e.split("=", 1)[0], self.option_strings()) for e in extra if e.startswith("-")]
        self.error(f"unrecognized arguments: {' '.join(extra)}{next((h for h in hints if h), '')}")


def _command_list() -> str:
    grouped = {name for names in COMMAND_GROUPS.values() for name in names}
    groups = {**COMMAND_GROUPS, "other": tuple(n for n in COMMANDS if n not in grouped)}
    width = max(map(len, COMMANDS)) + 2
    lines = ["commands (ibot COMMAND --help for each):"]
    for title, names in groups.items():
        present = [n for n in names if n in COMMANDS]
        if present:
            lines.append(f"  {title}")
            lines += [f"    {n:<{width}}{COMMANDS[n][0]}" for n in present]
    return "\n".join(lines)


def build_parser() -> Parser:
    from ibot import __version__

    load_all()
    parser = Parser(prog="ibot", description="iBOT: Image BERT pre-training with online tokenizer",
                    epilog=_command_list(), formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"ibot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="one of the commands below")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        p = sub.add_parser(name, description=help_text, formatter_class=Formatter)
        add_arguments(p)
    return parser


def _innermost(parser: Parser, args: argparse.Namespace) -> Parser:
    """The parser of the (sub-)sub-command ``args`` were parsed for."""
    action = getattr(parser, "subcommands", None)
    name = getattr(args, action.dest, None) if action is not None else None
    if name is None or name not in action.choices:
        return parser
    return _innermost(action.choices[name], args)


def shorten_lists(message: str, keep: int = 3) -> str:
    """Long ``[...]`` lists in a message (e.g. missing state-dict keys) cut to their first items."""

    def cut(match: re.Match) -> str:
        items = match.group(1).split(", ")
        return match.group(0) if len(items) <= keep else f"[{', '.join(items[:keep])}, ... ({len(items) - keep} more)]"

    return re.sub(r"\[([^\[\]]{120,})\]", cut, message)


def out_of_memory_message(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for an out-of-memory error (torch's CUDA/CPU allocators, Python's MemoryError)."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or any(p in text for p in OUT_OF_MEMORY)):
        return None
    where = " on the GPU" if "CUDA" in text or type(exc).__name__ == "OutOfMemoryError" else (
        " on the CPU" if "DefaultCPUAllocator" in text or isinstance(exc, MemoryError) else "")
    size = re.search(r"[Tt]ried to allocate ([\d.]+) ?(bytes|[KMGT]i?B)", text)
    if size:
        amount = float(size.group(1))
        shown = f"{amount / 2**30:.1f} GiB" if size.group(2) == "bytes" else f"{size.group(1)} {size.group(2)}"
        where += f" (tried to allocate {shown})"
    if hasattr(args, "batch_size_per_device"):
        now = args.batch_size_per_device
        half = f"{max(1, now // 2)}" if now else "N"
        hint = (f"lower the batch per device, e.g. --batch-size-per-device {half} "
                f"(optim.batch_size_per_device={half}){'' if now else ', half the current value'}")
    elif isinstance(getattr(args, "batch_size", None), int):
        hint = f"use a smaller --batch-size (now {args.batch_size}), e.g. --batch-size {max(1, args.batch_size // 2)}"
    else:
        hint = "use smaller images (--image-size) or run on a device with more memory"
    return f"out of memory{where}: {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # ``key=value`` overrides may stand between options: argparse leaves those over
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            _innermost(parser, args).unrecognized(extra)
    if not args.command:
        parser.print_help()
        return 1
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("ibot: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError, MemoryError) as exc:
        if os.environ.get("IBOT_DEBUG"):
            raise
        message = out_of_memory_message(exc, args)
        if message is None:
            message = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            message = shorten_lists(message)
        print(f"ibot: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
