"""Tensor functions of yamlnet's own, called by generated code.

They live in a module of their own that imports torch at the top (TorchScript compiles
them and looks `torch` up among their globals), imported only when the registry loads
its ops, so `import yamlnet` stays free of torch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["positions", "interpolate_like", "STANDALONE_FUNCTIONS"]


def positions(x, dim: int = -1):
    """0, 1, ..., x.shape[dim] - 1 (int64, on x's device)."""
    return torch.arange(x.shape[dim], device=x.device)


def interpolate_like(x, like, mode: str = "nearest", align_corners: Optional[bool] = None):  # noqa: UP045 - TorchScript reads it
    """x resized to like's spatial size (dims 2 on): F.interpolate with a size that is
    read at run time, so a symbolic size stays symbolic."""
    return torch.nn.functional.interpolate(x, size=like.shape[2:], mode=mode, align_corners=align_corners)


# What a standalone file (--emit-python) defines itself, under the name fx gives each.
STANDALONE_FUNCTIONS = {
    positions: "def {name}(x, dim=-1):\n    return torch.arange(x.shape[dim], device=x.device)\n",
    interpolate_like: "def {name}(x, like, mode='nearest', align_corners=None):\n"
    "    return torch.nn.functional.interpolate(x, size=like.shape[2:], mode=mode, align_corners=align_corners)\n",
}
