"""A new pre-training run whose networks start from the weights of a checkpoint (``run.init_from``,
``ibot pretrain --init-from``), as opposed to resuming a run: epoch 0, fresh schedules, optimiser
and loss centres; only the weights come from the file.

The file is one of our ``.safetensors`` pre-training checkpoints, an official full
``checkpoint.pth`` (student and teacher) or a published backbone (``checkpoint_teacher.pth``).
The student starts from the file's student and the teacher from its teacher; a file with one
network starts both from it. Backbones must fit the run's config (one-line error naming both
architectures); a head that is missing or does not fit starts at random init, and a line says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ibot.build import check_checkpoint_shapes, head_differences
from ibot.config import PretrainConfig
from ibot.formats import official, ours
from ibot.hub import DERIVED_KEYS

__all__ = ["InitWeights", "check_init_weights", "init_networks", "read_init_weights"]

State = dict[str, torch.Tensor]
NETWORKS = ("student", "teacher")
OPTIONAL_KEYS = ("masked_embed",)  # the student's mask token: a teacher has none (it stays zero)


@dataclass
class InitWeights:
    """The networks of a checkpoint file: name (``student``, ``teacher``, or ``backbone`` for a
    published backbone) -> (backbone state, head state, empty without a head)."""

    path: Path
    networks: dict[str, tuple[State, State]]

    def source(self, name: str) -> str:
        """The file's network that network ``name`` of the run starts from."""
        return name if name in self.networks else next(iter(self.networks))


def read_init_weights(path: str | Path) -> InitWeights:
    """Read the networks of ``path`` (see the module docstring), without the optimiser or loss."""
    path = Path(path)
    if ours.is_our_checkpoint(path):
        meta = ours.read_metadata(path)
        kind = ours.checkpoint_kind(meta, path)
        if kind != "pretrain":
            raise ValueError(f"{path} is not a pre-training checkpoint (kind {kind}); a run starts from the weights "
                             f"of one of ours, or of an official checkpoint.pth / checkpoint_teacher.pth")
        networks = {}
        for name in NETWORKS:
            tensors, _ = ours.load_checkpoint(path, prefix=f"{name}.")
            backbone = ours.strip_prefix(f"{name}.backbone.", tensors)
            if backbone:
                networks[name] = (backbone, ours.strip_prefix(f"{name}.head.", tensors))
    else:
        checkpoint = official.read_official(path)
        found = {"backbone": checkpoint.backbone} if checkpoint.backbone is not None else checkpoint.networks
        networks = {name: official.split_network(state) for name, state in found.items()}
        networks = {name: (backbone, head) for name, (backbone, head) in networks.items() if backbone}
    if not networks:
        raise ValueError(f"{path} holds no backbone weights (no student.backbone.* or teacher.backbone.* tensors)")
    return InitWeights(path, {name: ({k: v for k, v in backbone.items() if not k.endswith(DERIVED_KEYS)}, head)
                              for name, (backbone, head) in networks.items()})


def check_init_weights(cfg: PretrainConfig, weights: InitWeights) -> None:
    """One-line error naming the file and both architectures when a backbone does not fit ``cfg``
    (:func:`ibot.build.check_checkpoint_shapes`); builds nothing."""
    shapes = {f"{name}.backbone.{k}": tuple(v.shape) for name in NETWORKS
              for k, v in weights.networks[weights.source(name)][0].items()}
    check_checkpoint_shapes(cfg, shapes, str(weights.path))


def _load_backbone(module: nn.Module, state: State, name: str, path: Path) -> None:
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if k in expected or k not in OPTIONAL_KEYS}
    missing = sorted(set(expected) - set(state) - set(OPTIONAL_KEYS))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: its backbone weights do not fit this run's {name} backbone: missing keys "
                         f"{missing[:8]}, unexpected keys {unexpected[:8]}, other shapes {wrong[:8]}")
    module.load_state_dict(state, strict=False)


def _head_problem(cfg: PretrainConfig, module: nn.Module, state: State) -> str | None:
    """Why ``state`` cannot start ``module`` (a head of ``cfg``), or None when it can."""
    if not state:
        return "the file holds backbone weights only"
    try:
        differ = head_differences(cfg, state)
    except ValueError as exc:
        return str(exc)
    if differ:
        return f"they do not fit this run's config: {', '.join(differ)}"
    expected = module.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        return "their tensors are not those of this run's heads (a norm layer, or other keys)"
    tied = [n for n in ("weight_g", "weight_v") if not torch.equal(state[f"last_layer.{n}"], state[f"last_layer2.{n}"])]
    if getattr(module, "shared_head", False) and tied:
        return "their last layers are not tied, as model.shared_head / shared_head_teacher = true ask"
    return None


def init_networks(student: nn.Module, teacher: nn.Module, cfg: PretrainConfig,
                  weights: str | Path | InitWeights) -> list[str]:
    """Load the weights of a checkpoint (a path, or what :func:`read_init_weights` read) into the
    ``student`` and ``teacher`` (multi-crop wrappers: ``backbone``, ``head``) of a run of ``cfg``;
    returns the lines to print about it."""
    if not isinstance(weights, InitWeights):
        weights = read_init_weights(weights)
    check_init_weights(cfg, weights)
    problems: dict[str, list[str]] = {}
    for name, network in zip(NETWORKS, (student, teacher)):
        backbone, head = weights.networks[weights.source(name)]
        _load_backbone(network.backbone, backbone, name, weights.path)
        problem = _head_problem(cfg, network.head, head)
        if problem is None:
            network.head.load_state_dict(head)
        else:  # the head built at random init stays
            problems.setdefault(problem, []).append(name)
    sources = ", ".join(f"{name} <- its {weights.source(name)}" for name in NETWORKS)
    heads = [name for name in NETWORKS if not any(name in names for names in problems.values())]
    what = "backbones" + (" and heads" if len(heads) == 2 else f" and {heads[0]} head" if heads else "")
    lines = [f"starting from the weights of {weights.path} ({sources}: {what}) at epoch 0, with a fresh "
             f"optimiser, schedules and loss centres"]
    for problem, names in problems.items():
        lines.append(f"{weights.path}: the {' and '.join(names)} head{'s start' if len(names) > 1 else ' starts'} "
                     f"at random init: {problem}")
    return lines
