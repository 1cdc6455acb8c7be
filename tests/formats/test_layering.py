"""The checkpoint formats sit below every module that builds networks from them."""

import ast
from pathlib import Path

import ibot

PACKAGE = Path(ibot.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def ibot_imports(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if name == "ibot" or name.startswith("ibot.")}


def test_formats_import_nothing_from_ibot_but_formats_and_the_atomic_writer():
    for path in (PACKAGE / "formats").glob("*.py"):
        assert {n for n in ibot_imports(path) if not n.startswith(("ibot.formats", "ibot.files"))} == set(), path.name


def test_hub_and_convert_stay_below_train_and_eval():
    for name in ("hub.py", "convert.py"):
        assert not {n for n in ibot_imports(PACKAGE / name) if n.startswith(("ibot.train", "ibot.eval"))}, name
