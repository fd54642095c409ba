"""Pretrained torchvision weights named in `init:` (`{torchvision: resnet50, weights:
IMAGENET1K_V2}`), found where torchvision keeps its downloads: the torch hub cache,
`torch.hub.get_dir()/checkpoints` (`$TORCH_HOME/hub/checkpoints` when TORCH_HOME is set).

Nothing is downloaded: a build may run where there is no network, and a spec never
fetches. A file that is not there is one line saying which file to put where. The file
found is then read like any `init:` file (tensors only, names and shapes checked), so a
torchvision model whose state_dict keys differ from the spec's names fails there.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from .errors import SpecError, did_you_mean

__all__ = ["hub_weights", "hub_file"]


def hub_weights(model: str, member: str = "DEFAULT", loc=None, where: str = "init"):
    """The torchvision weights enum member `member` of `model` (DEFAULT: the best one).

    >>> hub_weights("resnet18", "IMAGENET1K_V1").url
    'https://download.pytorch.org/models/resnet18-f37072fd.pth'
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model)
    except ValueError:
        hint = did_you_mean(model, torchvision.models.list_models()) or "torchvision.models.list_models() names them"
        raise SpecError(f"torchvision has no model '{model}'", loc, where + ".torchvision", hint) from None
    try:
        return enum[member]
    except KeyError:
        names = [m.name for m in enum]
        raise SpecError(f"{model} has no weights '{member}'", loc, where + ".weights",
                        did_you_mean(member, names) or f"its weights: {', '.join(names)}, DEFAULT") from None  # fmt: skip


def hub_file(item) -> str:
    """The path of an `init:` torchvision item's weights in the hub cache, or a SpecError
    that says where to put the file."""
    import torch

    weights = hub_weights(item.torchvision, item.weights or "DEFAULT", item.loc, item.where)
    name = os.path.basename(urlparse(weights.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise SpecError(f"{item.label}: weights file not found: put {name} in {folder} "
                        f"(torch.hub.get_dir()/checkpoints; nothing is downloaded)", item.loc, item.where,
                        f"its URL: {weights.url}")  # fmt: skip
    return path
