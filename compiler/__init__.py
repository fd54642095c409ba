"""yamlnet.compiler — spec text -> validated spec -> graph -> checks -> shapes -> nn.Module.

Stages, one module each: load, validate, expand, graph, checks, shapes, codegen;
`compile.py` runs them in order. The compiler never imports the runtime.
"""

from .errors import (
    Diagnostic,
    ExprError,
    GraphError,
    LoadError,
    Location,
    PluginError,
    SchemaError,
    ShapeError,
    SpecError,
)
from .ops import install_builtin_sources
from .registry import REGISTRY, ArgDef, OpDef, register_op

install_builtin_sources(REGISTRY)

__all__ = [
    "REGISTRY", "ArgDef", "OpDef", "register_op", "Diagnostic", "Location", "SpecError",
    "LoadError", "SchemaError", "ExprError", "GraphError", "ShapeError", "PluginError",
]  # fmt: skip
