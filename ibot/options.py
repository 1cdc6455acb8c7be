"""Options of any dataclass config: YAML files and ``name=value`` overrides, typed and checked.

A config is a dataclass whose fields are values or nested dataclasses (sections); an option is the
dotted path of a value, ``optim.lr`` in :class:`ibot.config.PretrainConfig`, ``lr`` in a flat
config. Values from YAML or the command line are converted to the field's declared type, and a
misspelt option is a one-line error naming the closest one::

    set_option(cfg, "optim.lr", "1e-3")
    apply(cfg, yaml_path="my.yaml", overrides=["optim.epochs=100"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

Config = TypeVar("Config")


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union or (origin is not None and type(None) in args) or str(origin) == "types.UnionType":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, name)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"option '{name}': cannot read {value!r} ({'; '.join(errors)})")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"option '{name}' expects a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, name) for v in value]
        if origin is tuple:
            if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
                raise ValueError(f"option '{name}' expects 2 values, got {value!r}")
            return tuple(items)
        return items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"option '{name}' expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"option '{name}' expects an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"option '{name}' expects an integer, got {value!r}") from None
    if annotation is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"option '{name}' expects a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    raise TypeError(f"option '{name}': unsupported type {annotation}")


def option_names(cfg: Any) -> list[str]:
    """Every option of ``cfg`` (a dataclass or its class), as dotted paths of its value fields."""
    names = []
    for f in dataclasses.fields(cfg):
        inner = get_type_hints(cfg if isinstance(cfg, type) else type(cfg))[f.name]
        if dataclasses.is_dataclass(inner):
            names += [f"{f.name}.{name}" for name in option_names(inner)]
        else:
            names.append(f.name)
    return names


def _unknown(dotted: str, node: Any, prefix: str) -> ValueError:
    """The error for an unknown option, suggesting the closest option under ``node``."""
    hint = difflib.get_close_matches(dotted[len(prefix):], option_names(node), n=1)
    extra = f" Did you mean '{prefix}{hint[0]}'?" if hint else ""
    return ValueError(f"unknown option '{dotted}'.{extra}")


def set_option(cfg: Any, dotted: str, value: Any) -> None:
    """Set the option ``dotted`` (``section.field``, or ``field`` of a flat config) on ``cfg``;
    raises a one-line error naming a misspelt option and the closest one, or a value outside the
    field's ``metadata["choices"]``."""
    node, prefix = cfg, ""
    *sections, key = dotted.split(".")
    for section in sections:
        hints = get_type_hints(type(node))
        if section not in hints or not dataclasses.is_dataclass(hints[section]):
            raise _unknown(dotted, cfg, "")
        node, prefix = getattr(node, section), f"{prefix}{section}."
    hints = get_type_hints(type(node))
    if key not in hints or dataclasses.is_dataclass(hints[key]):
        raise _unknown(dotted, node, prefix)
    value = coerce(value, hints[key], dotted)
    choices = next(f.metadata.get("choices") for f in dataclasses.fields(node) if f.name == key)
    if choices is not None and value not in choices:  # the field's metadata, as its command-line option has
        raise ValueError(f"{dotted} must be one of {', '.join(map(str, choices))}, got '{value}'")
    setattr(node, key, value)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file; a missing file or another shape is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return tree


def load_yaml(cfg: Any, path: str | Path, ignore: tuple[str, ...] = ("preset",)) -> None:
    """Apply a YAML file of (nested) options, ``optim: {lr: 1e-3}``; the keys of ``ignore`` (the
    preset, read before) are skipped."""
    tree = read_yaml(path)
    for key in ignore:
        tree.pop(key, None)
    for dotted, value in flatten(tree).items():
        set_option(cfg, dotted, value)


def to_yaml(cfg: Any) -> str:
    """``cfg`` as the YAML that :func:`apply` (and ``--config``) reads back."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)`` (the value read as YAML)."""
    if "=" not in text:
        raise ValueError(f"override '{text}' must look like section.field=value")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def apply(cfg: Config, yaml_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          ignore: tuple[str, ...] = ("preset",)) -> Config:
    """The YAML file (but its keys ``ignore``), then ``name=value`` overrides, applied to ``cfg`` in
    place; returns it."""
    if yaml_path is not None:
        load_yaml(cfg, yaml_path, ignore)
    for text in overrides:
        set_option(cfg, *parse_override(text))
    return cfg


def from_dict(cfg: Config, tree: dict[str, Any]) -> Config:
    """``cfg`` with the options of a (nested) mapping, e.g. a config saved with ``dataclasses.asdict``."""
    for dotted, value in flatten(copy.deepcopy(tree)).items():
        set_option(cfg, dotted, value)
    return cfg


_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def field_help(cls: type) -> dict[str, str]:
    """Help of each field of a dataclass: its ``metadata["help"]``, else the comment at the end of
    its line in the source (``lr: float = 5e-4  # for a batch of 256``)."""
    comments: dict[str, str] = {}
    try:
        for line in inspect.getsource(cls).splitlines():
            match = _FIELD_COMMENT.match(line)
            if match and line[:match.start(2)].count('"') % 2 == 0 and line[:match.start(2)].count("'") % 2 == 0:
                comments[match.group(1)] = match.group(2)
    except (OSError, TypeError):  # no source (frozen application): metadata only
        pass
    return {f.name: f.metadata.get("help", comments.get(f.name, "")) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Limit:
    """The values a numeric option may take: finite, above ``low`` (or at it unless ``low_open``)
    and below ``high`` (or at it unless ``high_open``)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def get_option(cfg: Any, dotted: str) -> Any:
    """The value of the option ``dotted`` of ``cfg``."""
    for name in dotted.split("."):
        cfg = getattr(cfg, name)
    return cfg


def check_limits(cfg: Any, limits: dict[str, Limit], ordered_pairs: tuple[str, ...] = (),
                 sections: tuple[str, ...] | None = None) -> None:
    """One-line error for the first numeric option of ``limits`` (of ``sections``; None: all)
    outside its limit, or a pair of ``ordered_pairs`` out of order, naming the option."""
    for dotted, limit in limits.items():
        if sections is not None and dotted.partition(".")[0] not in sections:
            continue
        value = get_option(cfg, dotted)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and not limit.holds(v) for v in values):
            finite = "finite and " if any(isinstance(v, float) for v in values) else ""
            each = "each value " if isinstance(value, (list, tuple)) else ""
            raise ValueError(f"{dotted}={_show(value)} is out of range: {each}must be {finite}{limit}")
        if dotted in ordered_pairs and value[0] > value[1]:
            raise ValueError(f"{dotted}={_show(value)}: the first value (low) must not exceed the second (high)")


def _show(value: Any) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)
