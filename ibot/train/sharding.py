"""Fully sharded data parallelism (``run.strategy=fsdp``): torch's per-parameter ``fully_shard``
(FSDP2) over the student and the teacher, and the full tensors of both and of the optimiser for
our single-file checkpoint.

Both networks are sharded alike on the same 1-d mesh: every transformer block is a unit of its own
and the whole network (embeddings, norms, the head and the ViT's last block) is the root unit.
Each parameter is then a ``DTensor`` sharded on dim 0, the teacher's shard of a parameter lying on
the same process as the student's, so the EMA update and the finiteness checks run on the local
shards without communication. The ViT's last block stays in the root unit because only the tokens
the loss reads go through its MLP, by calls to its sub-modules that FSDP's forward hooks do not see
(``ibot.models.vision_transformer.block_at_tokens``).

Checkpoints hold full tensors under the keys of a DDP run: they are gathered on saving (every
process takes part, rank 0 keeps them) and cut into this run's shards on loading, so a file loads
whatever the strategy and the number of processes that wrote it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``tensor`` (a ``DTensor``), or ``tensor`` itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are ``DTensor`` shards (it went through :func:`shard_networks`)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The blocks sharded one by one: every Swin block, every ViT block but the last (its MLP runs
    on some tokens only, outside its ``forward``; it stays in the root unit)."""
    if hasattr(backbone, "layers"):  # Swin: stages of blocks
        return [block for stage in backbone.layers for block in stage.blocks]
    return list(backbone.blocks[:-1])


def shard_networks(student: nn.Module, teacher: nn.Module, device: torch.device) -> None:
    """``fully_shard`` each transformer block of ``student`` and ``teacher`` (multi-crop wrappers
    on ``device``), then each whole network, over all processes of the default group. The teacher
    runs under ``no_grad`` with no backward to reshard it, so every unit of it reshards after its
    forward: the EMA then writes the shards its next forward gathers."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # the multi-crop outputs include views (the backbone's [CLS] rows), never written in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPMultiCropWrapper\) returned a view")
    for network, root_reshards in ((student, None), (teacher, True)):
        for block in transformer_blocks(network.backbone):
            fully_shard(block, mesh=mesh, reshard_after_forward=True)
        fully_shard(network, mesh=mesh, reshard_after_forward=root_reshards)


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors: gathered (on the CPU, rank 0's only; a collective
    every process calls) when it is sharded."""
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (every process holds them) into ``module``; sharded, each process keeps
    its own shard of each (``distribute_tensor`` with no source rank: no communication). Errors as
    ``load_state_dict``'s, naming missing, unexpected and misshapen keys."""
    own = module.state_dict()
    module.load_state_dict({key: _shard_like(value, own[key]) if key in own and value.shape == own[key].shape
                            else value for key, value in state.items()})


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` (parameters numbered as always) with whole tensors: the ``DTensor``
    moments gathered one at a time, kept on the CPU by rank 0 (a collective every process calls)."""
    state = optimizer.state_dict()
    if not any(isinstance(v, DTensor) for slots in state["state"].values() for v in slots.values()):
        return state
    keep = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    gathered: dict[int, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, DTensor):
                value = value.full_tensor()
            if keep:
                gathered.setdefault(index, {})[name] = value.cpu() if torch.is_tensor(value) else value
    return {"state": gathered, "param_groups": state["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """A full optimiser state (whole tensors, as :func:`full_optimizer_state` gives and every process
    holds) cut into the shards of ``optimizer``'s ``DTensor`` parameters, for ``load_state_dict``;
    unchanged when they are not sharded. Scalars (``step``) stay whole."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return state
    sharded: dict[int, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        param = params[int(index)] if int(index) < len(params) else None  # else load_state_dict names the misfit
        sharded[index] = {
            name: _shard_like(value, param) if param is not None and torch.is_tensor(value)
            and value.shape == param.shape else value
            for name, value in slots.items()}
    return {"state": sharded, "param_groups": state["param_groups"]}


def _shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole, on every process) placed as ``like`` is: each process keeps its own shard."""
    if not isinstance(like, DTensor):
        return tensor
    whole = tensor.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def local_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local` of each."""
    return [local(t) for t in tensors]
