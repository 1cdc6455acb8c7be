"""The override machinery of any dataclass config (``ibot.options``): flat and nested configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ibot.options import apply, field_help, from_dict, option_names, set_option


@dataclass
class Flat:
    epochs: int = 10  # passes over the data
    layer_decay: float | None = None
    policy: str | None = field(default="rand", metadata={"help": "augmentation policy"})
    ratios: tuple[float, float] = (0.1, 1.0)


@dataclass
class Nested:
    flat: Flat = field(default_factory=Flat)
    seed: int = 0


def test_a_flat_config_takes_name_value_overrides_typed(tmp_path):
    cfg = Flat()
    (tmp_path / "c.yaml").write_text("epochs: 3\nratios: [0.2, 0.5]\n")
    apply(cfg, tmp_path / "c.yaml", ["layer_decay=0.65", "policy=none"])
    assert (cfg.epochs, cfg.layer_decay, cfg.policy, cfg.ratios) == (3, 0.65, None, (0.2, 0.5))


def test_a_nested_config_takes_dotted_options():
    cfg = from_dict(Nested(), {"flat": {"epochs": "7"}, "seed": 2})
    set_option(cfg, "flat.layer_decay", "0.5")
    assert (cfg.flat.epochs, cfg.flat.layer_decay, cfg.seed) == (7, 0.5, 2)
    assert option_names(Nested) == ["flat.epochs", "flat.layer_decay", "flat.policy", "flat.ratios", "seed"]


@pytest.mark.parametrize("cfg, option, hint", [
    (Flat(), "layer_decy", "layer_decay"),
    (Nested(), "flat.epoch", "flat.epochs"),
    (Nested(), "flt.epochs", "flat.epochs"),
])
def test_a_misspelt_option_is_named_with_the_closest(cfg, option, hint):
    with pytest.raises(ValueError, match=f"unknown option '{option}'. Did you mean '{hint}'"):
        set_option(cfg, option, 1)


def test_a_section_is_not_an_option():
    with pytest.raises(ValueError, match="unknown option 'flat'"):
        set_option(Nested(), "flat", 1)


def test_a_value_of_the_wrong_type_names_the_option():
    with pytest.raises(ValueError, match="option 'epochs' expects an integer"):
        set_option(Flat(), "epochs", "many")


@dataclass
class Head:
    pool: str = field(default="cls", metadata={"choices": ("cls", "mean")})


@dataclass
class WithChoices:
    head: Head = field(default_factory=Head)


def test_a_value_outside_the_fields_choices_is_refused_wherever_it_comes_from(tmp_path):
    (tmp_path / "c.yaml").write_text("head: {pool: max}\n")
    for given in (lambda cfg: apply(cfg, tmp_path / "c.yaml"), lambda cfg: apply(cfg, overrides=["head.pool=max"])):
        cfg = WithChoices()
        with pytest.raises(ValueError, match="head.pool must be one of cls, mean, got 'max'"):
            given(cfg)
        assert cfg.head.pool == "cls"
    set_option(cfg, "head.pool", "mean")
    assert cfg.head.pool == "mean"


def test_field_help_from_metadata_or_the_line_comment():
    assert field_help(Flat) == {"epochs": "passes over the data", "layer_decay": "", "policy": "augmentation policy",
                                "ratios": ""}
