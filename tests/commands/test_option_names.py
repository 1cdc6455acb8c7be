"""One spelling per option across the commands: ``--output-dir`` for a folder the command writes
into, ``-o/--output`` for the one file it writes, and an option of the same name has the same
flags in every command (``ibot`` sub-commands and ``./run.sh``)."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Iterator

import pytest

from ibot import cycle
from ibot.cli import main
from ibot.commands import COMMANDS, OUTPUT_DIR_FLAGS, OUTPUT_FILE_FLAGS, load_all

OUTPUT_NAME = re.compile(r"(^|[-_])(out|output|outdir|outfile|save|dest)($|[-_])")


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command, parser)`` of every registered command, its sub-commands and ./run.sh."""
    load_all()
    for name, (_, add_arguments, _) in sorted(COMMANDS.items()):
        parser = argparse.ArgumentParser(prog=f"ibot {name}")
        add_arguments(parser)
        yield from _walk(f"ibot {name}", parser)
    yield "run.sh", cycle.build_parser()


def _walk(name: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _walk(f"{name} {sub}", subparser)


def visible_arguments() -> Iterator[tuple[str, argparse.Action]]:
    for name, parser in parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            yield name, action


def test_outputs_are_output_dir_or_output():
    wrong = []
    for name, action in visible_arguments():
        names = [action.dest, *(s.lstrip("-") for s in action.option_strings)]
        if any(OUTPUT_NAME.search(n) for n in names):
            expected = OUTPUT_DIR_FLAGS if action.dest == "output_dir" else OUTPUT_FILE_FLAGS
            if sorted(action.option_strings) != sorted(expected):
                wrong.append(f"{name}: {'/'.join(action.option_strings) or action.dest.upper()}")
    assert wrong == []


def test_an_option_has_the_same_flags_in_every_command():
    flags: dict[str, dict[tuple[str, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, action in visible_arguments():
        flags[action.dest][tuple(sorted(action.option_strings))].append(name)
    differing = {dest: dict(spellings) for dest, spellings in flags.items() if len(spellings) > 1}
    assert differing == {}


@pytest.mark.parametrize("argv, note", [
    (["export", "{tmp}/missing.safetensors", "{tmp}/model.onnx"], "positional CHECKPOINT is deprecated"),
    (["convert", "{tmp}/missing.pth", "{tmp}/out.safetensors", "--arch", "vit_small"], "positional OUTPUT is deprecated"),
])
def test_the_old_positional_spelling_still_works(argv, note, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2  # it reached the command: the file is missing
    err = capsys.readouterr().err
    assert note in err and "missing." in err.splitlines()[-1]


def test_a_missing_output_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", "-c", str(tmp_path / "c.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == "ibot: error: the following arguments are required: -o/--output"
