"""Options made from dataclass fields, and the configuration group of ``ibot finetune`` and
``ibot pretrain`` (``ibot.commands._config_args``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import yaml

from ibot.cli import main
from ibot.commands import COMMANDS, load_all
from ibot.commands._config_args import add_dataclass_arguments, set_given
from tests.eval.helpers import session_tiny_run

# the option strings of these commands before their options were made from dataclasses
FINETUNE_FLAGS = {
    "--arch", "--auto-augment", "--batch-size", "--checkpoint", "--clip-grad", "--crop-pct", "--cutmix", "--data",
    "--device", "--drop-path", "--ema", "--ema-decay", "--epochs", "--help", "--holdout", "--holdout-seed",
    "--image-size", "--key", "--label-smoothing", "--layer-decay", "--lr", "--min-crop-scale", "--min-lr", "--mixup",
    "--no-progress", "--num-workers", "--output-dir", "--patch-size", "--reprob", "--resume", "--seed",
    "--warmup-epochs", "--weight-decay", "-c", "-h"}
PRETRAIN_FLAGS = {
    "--allow-changes", "--batch-size-per-device", "--config", "--data", "--device", "--epochs", "--eval-every",
    "--help", "--init-from", "--max-steps", "--no-knn", "--no-progress", "--no-tensorboard", "--output-dir",
    "--overwrite", "--precision", "--preset", "--print-config", "--resume", "--seed", "-h"}
EVAL_FLAGS = {  # those of every feature-based evaluation, which adds its own (EVAL_COMMAND_FLAGS)
    "--arch", "--batch-size", "--cache-dir", "--checkpoint", "--crop-pct", "--data", "--device", "--help", "--holdout",
    "--holdout-seed", "--image-size", "--key", "--no-cache", "--no-progress", "--num-workers", "--output-dir",
    "--patch-size", "-c", "-h"}
EVAL_COMMAND_FLAGS = {
    "knn": {"--ks", "--temperature", "--features"},
    "linear": {"--avgpool-patchtokens", "--epochs", "--lrs", "--n-last-blocks", "--seed", "--train-batch-size",
               "--weight-decay", "--protocol", "--min-crop-scale", "--features"},
    "cluster": {"--methods", "--num-clusters", "--seed", "--split"},
    "semisup": {"--C", "--fractions", "--max-iter", "--seed"},
}


@dataclass
class Example:
    epochs: int = 10  # passes over the data
    layer_decay: float | None = None
    ema: bool = False  # keep an EMA
    progress: bool = True  # progress bars
    ks: list[int] = field(default_factory=lambda: [10, 20])
    key: str = field(default="teacher", metadata={"choices": ("teacher", "student"), "flags": ("-k",)})


def parser_of(command: str) -> argparse.ArgumentParser:
    load_all()
    parser = argparse.ArgumentParser(prog=f"ibot {command}")
    COMMANDS[command][1](parser)
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_a_field_becomes_a_typed_option_with_its_default_and_help():
    parser = argparse.ArgumentParser()
    assert add_dataclass_arguments(parser, Example) == ["epochs", "layer_decay", "ema", "progress", "ks", "key"]
    defaults = parser.parse_args([])
    assert (defaults.epochs, defaults.layer_decay, defaults.ema, defaults.progress, defaults.ks, defaults.key) == (
        10, None, False, True, [10, 20], "teacher")
    args = parser.parse_args(["--epochs", "3", "--layer-decay", "0.65", "--ema", "--no-progress", "--ks", "1", "2",
                              "-k", "student"])
    assert (args.epochs, args.layer_decay, args.ema, args.progress, args.ks, args.key) == (
        3, 0.65, True, False, [1, 2], "student")
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["epochs"] == "passes over the data" and helps["progress"] == "no progress bars"
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "many"])


def test_given_only_options_set_what_was_given():
    parser = argparse.ArgumentParser()
    names = add_dataclass_arguments(parser, Example, defaults=Example(epochs=5), given_only=True)
    assert "(default: 5)" in next(a.help for a in parser._actions if a.dest == "epochs")
    cfg = Example(epochs=7)
    assert set_given(cfg, parser.parse_args(["--no-progress"]), names) == ["progress"]
    assert (cfg.epochs, cfg.progress) == (7, False)


@pytest.mark.parametrize("command, expected", [
    # finetune adds its configuration file, the options of the short recipe and the classifier's input
    ("finetune", FINETUNE_FLAGS | {"--config", "--print-config", "--recipe", "--color-jitter", "--head-lr-scale",
                                   "--head-init-epochs", "--freeze-backbone-epochs", "--pool"}),
    ("pretrain", PRETRAIN_FLAGS),
    *((name, EVAL_FLAGS | flags) for name, flags in EVAL_COMMAND_FLAGS.items())])
def test_the_commands_keep_their_option_strings(command, expected):
    assert option_strings(parser_of(command)) == expected


@pytest.mark.parametrize("command", ["knn", "linear", "cluster", "semisup", "finetune"])
def test_the_evaluations_share_the_model_and_data_options(command):
    assert EVAL_FLAGS - {"--cache-dir", "--no-cache"} <= option_strings(parser_of(command))


def test_finetune_names_a_misspelt_override_with_a_suggestion(tmp_path, capsys):
    argv = ["finetune", "-c", str(tmp_path / "c.safetensors"), "--output-dir", str(tmp_path), "layer_decy=0.6"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ibot: error: unknown option 'layer_decy'. Did you mean 'layer_decay'?"


@pytest.mark.parametrize("given", [["--pool", "max"], ["pool=max"]])
def test_finetune_refuses_an_unknown_pool_before_reading_anything(tmp_path, capsys, given):
    # the checkpoint does not exist: the pool is checked first, with the option's choices
    argv = ["finetune", "-c", str(tmp_path / "missing.safetensors"), "--output-dir", str(tmp_path), *given]
    if given[0] == "--pool":  # argparse refuses it and exits
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "max" in err and "cls" in err and "grid" in err and "missing.safetensors" not in err


def test_a_finetune_yaml_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text("preset: vit_small_16\n")  # fine-tuning has no presets: nothing is dropped silently
    assert main(["finetune", "-c", str(tmp_path / "c.safetensors"), "--config", str(config)]) == 2
    assert "unknown option 'preset'" in capsys.readouterr().err


def test_finetune_reads_a_yaml_file_overrides_and_options_in_that_order(tmp_path_factory, tmp_path, capsys):
    checkpoint, _ = session_tiny_run(tmp_path_factory)
    config = tmp_path / "ft.yaml"
    config.write_text("epochs: 3\nlr: 0.002\nauto_augment: none\nimage_size: 8\n")
    argv = ["finetune", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--config", str(config),
            "lr=0.003", "layer_decay=0.5", "--layer-decay", "0.6", "--ema", "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["epochs"], printed["lr"], printed["layer_decay"], printed["auto_augment"]) == (3, 0.003, 0.6, None)
    assert printed["image_size"] == 8 and printed["ema"] is True
    assert not (tmp_path / "finetune.json").exists()


def test_finetune_print_config_shows_the_defaults_and_the_checkpoint_image_size(tmp_path_factory, tmp_path, capsys):
    checkpoint, _ = session_tiny_run(tmp_path_factory)
    assert main(["finetune", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    from ibot.eval.finetune_config import FinetuneConfig

    expected = FinetuneConfig().__dict__
    assert printed["image_size"] == 16  # the tiny run's global crop size, not the 224 default
    assert {k: v for k, v in printed.items() if k not in ("image_size", "num_workers")} == {
        k: v for k, v in expected.items() if k not in ("image_size", "num_workers")}
