"""Command-line options made from the fields of a dataclass config, and the configuration group
(preset, YAML file, ``name=value`` overrides, ``--print-config``) of the commands that have one.

A field ``layer_decay: float | None = None  # layer-wise lr decay`` becomes ``--layer-decay``
(type float, dest ``layer_decay``, that help); a bool field that is true by default becomes
``--no-NAME``, one that is false ``--NAME``. Field metadata may add ``help``, ``metavar``,
``flags`` (more spellings), ``choices`` and ``required``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from ibot.options import apply, field_help, flatten, parse_override, read_yaml, set_option


def flag_name(name: str) -> str:
    """``layer_decay`` -> ``--layer-decay``."""
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> tuple[Any, bool]:
    """The type argparse converts to, and whether the field is a list (``nargs="+"``)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) in (list, tuple):
        return get_args(annotation)[0], True
    return annotation, False


def add_dataclass_arguments(group: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            defaults: Any = None, given_only: bool = False,
                            exclude: tuple[str, ...] = ()) -> list[str]:
    """One option per field of the dataclass ``cls`` (but ``exclude``), dest the field's name;
    returns those names. The defaults are ``defaults``' values where it has the field, else the
    fields' own. ``given_only``: the options default to None (only those given are set, see
    :func:`set_given`) and the help names the default."""
    hints, helps = get_type_hints(cls), field_help(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = getattr(defaults, f.name) if hasattr(defaults, f.name) else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        value_type, is_list = _value_type(hints[f.name])
        help_text = helps[f.name]
        if given_only and not (default is None or isinstance(default, bool) or default == "") \
                and "default" not in help_text:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        kwargs: dict[str, Any] = dict(dest=f.name, help=help_text or None)
        flags = [flag_name(f.name), *f.metadata.get("flags", ())]
        if value_type is bool:
            flags[0] = flag_name(f"no_{f.name}") if default else flag_name(f.name)
            kwargs["help"] = f"no {help_text}" if default and help_text else kwargs["help"]
            kwargs.update(action="store_const", const=not default, default=None if given_only else default)
        else:
            kwargs.update(type=value_type, default=None if given_only else default)
            if is_list:
                kwargs["nargs"] = "+"
            for key in ("metavar", "choices", "required"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        group.add_argument(*flags, **kwargs)
        names.append(f.name)
    return names


def set_given(cfg: Any, args: argparse.Namespace, names: list[str]) -> list[str]:
    """Set on ``cfg`` the options of ``names`` given on the command line (not None in ``args``),
    converted to the fields' types; returns their names."""
    given = [name for name in names if getattr(args, name, None) is not None]
    for name in given:
        set_option(cfg, name, getattr(args, name))
    return given


def add_config_arguments(p: argparse.ArgumentParser, yaml_example: str, override_example: str,
                         presets: str | None = None, option: str = "section.field") -> argparse._ArgumentGroup:
    """``--preset`` (with ``presets``, the help listing them), ``--config YAML``, trailing
    ``OPTION=value`` overrides and ``--print-config``: preset, then YAML file, then overrides."""
    g = p.add_argument_group("configuration (preset, then YAML file, then overrides)" if presets else
                             "configuration (YAML file, then overrides, then the options below)")
    if presets:
        g.add_argument("--preset", default=None, help=presets)
    g.add_argument("--config", default=None, metavar="YAML", help=f"YAML file of options, e.g. '{yaml_example}'")
    g.add_argument("overrides", nargs="*", metavar=f"{option}=value", help=f"overrides, e.g. {override_example}")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return g


def resolve_from_args(cfg: Any, args: argparse.Namespace, names: list[str]) -> list[str]:
    """``cfg`` with ``--config``'s YAML file, then the overrides, then the options of ``names``
    given on the command line; returns the options that these set."""
    ignore = ("preset",) if hasattr(args, "preset") else ()  # a YAML file's preset is read before
    apply(cfg, args.config, args.overrides, ignore)
    chosen = [key for key, _ in map(parse_override, args.overrides)]
    if args.config:
        chosen = [*(key for key in flatten(read_yaml(args.config)) if key not in ignore), *chosen]
    return [*chosen, *set_given(cfg, args, names)]

