"""iBOT projection head: a shared MLP, then weight-normalised prototypes for [CLS] and patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose rows are weight-normalised: ``W = g * v / ||v||``.

    Keeps the parameter names of ``torch.nn.utils.weight_norm`` (``weight_g`` (out, 1),
    ``weight_v`` (out, in)) so official checkpoints load. ``g`` starts at 1; with ``freeze_g`` it
    stays there (the official ``norm_last_layer=True``), making the layer a cosine similarity.
    """

    def __init__(self, in_dim: int, out_dim: int, freeze_g: bool = True) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_g)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default, as officially

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_dim={self.weight_v.shape[1]}, out_dim={self.weight_v.shape[0]}"


class IBOTHead(nn.Module):
    """MLP ``Linear -> act -> ... -> Linear(bottleneck)``, L2-normalise, then weight-normalised
    prototypes: ``last_layer`` (out_dim) for [CLS], ``last_layer2`` (patch_out_dim) for patches.

    The MLP is always shared by [CLS] and patch tokens; ``shared_head`` ties the last layer too
    (``last_layer2`` is then the same module, and both names appear in the state dict).
    Official defaults: hidden 2048, bottleneck 256, 3 layers, GELU, no norm.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        patch_out_dim: int | None = None,
        norm: str | None = None,
        act: str = "gelu",
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        shared_head: bool = False,
    ) -> None:
        super().__init__()
        patch_out_dim = out_dim if patch_out_dim is None else patch_out_dim
        if shared_head and patch_out_dim != out_dim:
            raise ValueError(f"shared_head=True ties the last layers, so patch_out_dim ({patch_out_dim}) "
                             f"must equal out_dim ({out_dim})")
        if nlayers < 1:
            raise ValueError(f"nlayers must be at least 1, got {nlayers}")
        self.out_dim = out_dim
        self.patch_out_dim = patch_out_dim
        self.shared_head = shared_head

        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            layers: list[nn.Module] = []
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if norm is not None:  # one norm per layer (the official code reuses a single instance)
                    layers.append(_build_norm(norm, d_out))
                layers.append(_build_act(act))
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_weights)

        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, freeze_g=norm_last_layer)
        if shared_head:
            self.last_layer2 = self.last_layer
        else:
            self.last_layer2 = WeightNormLinear(bottleneck_dim, patch_out_dim, freeze_g=norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (..., D) -> the MLP's output on the unit sphere (..., bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1, p=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[CLS] (B, D) -> (B, out_dim); tokens (B, 1 + N, D) -> ((B, out_dim), (B, N, patch_out_dim))."""
        x = self.bottleneck(x)
        if x.dim() == 2:
            return self.last_layer(x)
        return self.last_layer(x[:, 0]), self.last_layer2(x[:, 1:])

    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (..., D) -> (..., patch_out_dim), without a [CLS] row."""
        return self.last_layer2(self.bottleneck(x))

    def forward_at(self, x: torch.Tensor, patch_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tokens (B, 1 + N, D) -> [CLS] (B, out_dim), the patch outputs at ``patch_index`` (M, 2)
        of (image, patch) pairs only (M, patch_out_dim), and every image's mean patch output over
        all N patches (B, patch_out_dim).

        The teacher's case: the loss reads its patch outputs at the student's masked tokens, and
        the centre their mean over all tokens, which is ``last_layer2`` of the mean normalised
        feature since that layer is linear: the (N, patch_out_dim) projection is never formed."""
        x = self.bottleneck(x)  # (B, 1 + N, bottleneck)
        images, patches = patch_index.unbind(1)
        return self.last_layer(x[:, 0]), self.last_layer2(x[images, patches + 1]), self.last_layer2(x[:, 1:].mean(1))


def _build_norm(norm: str, dim: int) -> nn.Module:
    if norm == "ln":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown head norm {norm!r}; use None or 'ln'")


def _build_act(act: str) -> nn.Module:
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown head act {act!r}; use 'gelu' or 'relu'")


def _init_weights(module: nn.Module) -> None:
    """Official init of the MLP: Linear weights trunc_normal(std .02), biases 0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
