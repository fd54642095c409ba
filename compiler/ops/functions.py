"""Tensor functions of yamlnet's own, called by generated code.

They live in a module of their own that imports torch at the top (TorchScript compiles
them and looks `torch` up among their globals), imported only when the registry loads
its ops, so `import yamlnet` stays free of torch.
"""

from __future__ import annotations

import torch

__all__ = ["positions", "STANDALONE_FUNCTIONS"]


def positions(x, dim: int = -1):
    """0, 1, ..., x.shape[dim] - 1 (int64, on x's device)."""
    return torch.arange(x.shape[dim], device=x.device)


# What a standalone file (--emit-python) defines itself, under the name fx gives each.
STANDALONE_FUNCTIONS = {
    positions: "def {name}(x, dim=-1):\n    return torch.arange(x.shape[dim], device=x.device)\n",
}
