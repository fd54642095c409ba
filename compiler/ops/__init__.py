"""Built-in op sources: every torch.nn module, tensor functions, parameters/buffers and
torchvision.ops layers. Each source registers `OpDef`s into the registry; nothing here
is a switch over op names."""

from __future__ import annotations

from .modules import module_opdef, register_torch_nn, register_torchvision_ops
from .tensors import register_constants, register_parameters, register_tensor_functions

__all__ = ["module_opdef", "install_builtin_sources"]


def install_builtin_sources(registry) -> None:
    registry.add_source(register_torch_nn)
    registry.add_source(register_tensor_functions)
    registry.add_source(register_parameters)
    registry.add_source(register_constants)
    registry.add_source(register_torchvision_ops)
