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


def resolve_resume(resume: str | None, output_dir: str | Path) -> str | None:
    """``--resume``: ``auto`` is OUTPUT_DIR/checkpoint.safetensors when it exists (else a fresh
    start); any other value must name an existing file."""
    if resume == "auto":
        candidate = Path(output_dir) / "checkpoint.safetensors"
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
