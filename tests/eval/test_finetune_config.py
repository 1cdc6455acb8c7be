"""Named fine-tuning recipes: official defaults, the short recipe, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from ibot.eval.finetune_config import RECIPES, FinetuneConfig, finetune_recipe


def test_official_recipe_is_the_defaults():
    assert finetune_recipe("official") == FinetuneConfig()


def test_short_recipe_drops_the_long_run_regularisation():
    short = finetune_recipe("short")
    assert short.mixup == short.cutmix == short.reprob == 0 and short.auto_augment is None
    assert short.min_crop_scale > FinetuneConfig().min_crop_scale and short.epochs < FinetuneConfig().epochs
    changed = {f.name for f in dataclasses.fields(FinetuneConfig)
               if getattr(short, f.name) != getattr(FinetuneConfig(), f.name)}
    assert changed == set(RECIPES["short"])  # every other field keeps the official default


def test_overrides_win_and_none_keeps_the_recipe():
    cfg = finetune_recipe("short", mixup=0.2, epochs=None, seed=3)
    assert cfg.mixup == 0.2 and cfg.seed == 3 and cfg.epochs == RECIPES["short"]["epochs"]


@pytest.mark.parametrize(("name", "overrides", "message"), [("long", {}, "recipe 'long'"),
                                                            ("short", {"mixupp": 0.1}, "mixupp")])
def test_bad_recipe_or_option(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        finetune_recipe(name, **overrides)
