"""Sub-commands of ``ibot``: one module each, registered with :func:`command`.

A module here defines ``add_arguments(parser)`` and ``run(args) -> int`` and decorates them::

    @command("knn", "weighted k-NN evaluation")(add_arguments)
    def run(args): ...

Modules import heavy dependencies inside ``run`` so that ``ibot --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str):
    """Register ``add_arguments`` under ``name``; the decorated function runs the command."""

    def register(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def wrap(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help_text, add_arguments, run)
            return run

        return wrap

    return register


# Where a command writes, spelt the same in every command: one file, or a folder of files.
OUTPUT_FILE_FLAGS = ("-o", "--output")
OUTPUT_DIR_FLAGS = ("--output-dir",)


def add_output_file(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str, default: str | None = None,
                    metavar: str = "FILE") -> None:
    """``-o/--output FILE``: the one file the command writes."""
    p.add_argument(*OUTPUT_FILE_FLAGS, dest="output", metavar=metavar, default=default, help=help_text)


def add_output_dir(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str,
                   default: str | None = None) -> None:
    """``--output-dir OUTPUT_DIR``: the folder the command writes its files into."""
    p.add_argument(*OUTPUT_DIR_FLAGS, dest="output_dir", default=default, help=help_text)


def add_old_positionals(p: argparse.ArgumentParser) -> None:
    """Hidden trailing positionals: the spelling of options that were positional before (see
    :func:`fill_old_positionals`)."""
    p.add_argument("old_positionals", nargs="*", help=argparse.SUPPRESS)


def fill_old_positionals(args: argparse.Namespace, flags: dict[str, str], name: str) -> None:
    """Give the options of ``flags`` (dest -> flag) that are unset the hidden positionals, in order,
    with a deprecation note on stderr; then every one of them must be set."""
    unset = [dest for dest in flags if getattr(args, dest) is None]
    values = list(args.old_positionals)
    if len(values) > len(unset):
        raise ValueError(f"unrecognized arguments: {' '.join(values[len(unset):])}")
    for dest, value in zip(unset, values):
        setattr(args, dest, value)
        print(f"ibot {name}: a positional {dest.upper()} is deprecated; give it with {flags[dest]}", file=sys.stderr)
    missing = [flag for dest, flag in flags.items() if getattr(args, dest) is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")


def resolve_resume(resume: str | None, output_dir: str | Path) -> str | None:
    """``--resume``: ``auto`` is OUTPUT_DIR/checkpoint.safetensors when it exists (else a fresh
    start); any other value must name an existing file."""
    if resume == "auto":
        from ibot.formats.ours import CHECKPOINT_NAME

        candidate = Path(output_dir) / CHECKPOINT_NAME
        return str(candidate) if candidate.exists() else None
    if resume and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows defaults (not empty ones, nor where the help names its own) and keeps
    hand-made line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        empty = action.default is None or action.default is False or action.default == []
        if empty or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def load_all() -> None:
    """Import every module of this package, so each registers its command."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
