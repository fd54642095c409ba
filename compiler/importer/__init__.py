"""`yamlnet import`: an nn.Module -> a spec that rebuilds it.

The module is traced with torch.fx. Layers yamlnet knows as ops (every torch.nn layer,
a few torchvision.ops, plugin ops) stay single nodes, and so do subclasses of torch.nn layers
that only compute their base's arguments (`Conv3DSimple(nn.Conv3d)`) and calls of functions a
plugin registered; the user's own modules are traced through (a TransformerEncoder as its
layers one after another). The traced graph is then cut back into the module tree it came from — every
node knows the stack of modules whose `forward` made it — so each submodule becomes a
scope with the same name, and the written spec has the module's state_dict keys.

Readable structure comes from three rules, applied bottom up:

- every instance of one class becomes a use of one **block** (`BasicBlock` ->
  `basic_block`). Instances are merged when their bodies have the same nodes in the same
  order; a node only some instances have gets `if: "${use_NAME}"`, and an argument that
  differs becomes a block parameter (arguments that always agree share one);
- an `nn.Sequential`/`ModuleList` whose children are chained uses of one block (or one
  op) becomes one node with `repeat: n`; values that change along it become expressions
  of `i` (`"${2 if i == 0 else 1}"`); one with several inputs or outputs (parallel
  branches) is written as a block;
- arguments the compiler infers from shapes (`in_channels`, ...) and arguments equal to
  their defaults are left out.

The written spec is then compiled, loaded with the module's state_dict (strict) and run
beside it on sample inputs; `ImportResult.check` says how close the outputs are.

The module is traced in eval and in training: outputs that only training returns
(GoogLeNet's aux heads) become `train_outputs:`, any other `if self.training:` difference
is refused.

The steps, one module each: `load` (the target, the inputs), `trace` (torch.fx; with
`modes`, `record`, `layer_args`, `functions`), `tree` (scopes), `blocks` (bodies, repeats,
merged templates), `write` (the YAML text; with `yaml_text`), `check`; `api` runs them
in turn, and `common` holds what they share.
"""

from __future__ import annotations

from .api import import_module
from .common import ImportFailure, ImportResult, snake_case
from .load import load_target, parse_input

__all__ = ["ImportFailure", "ImportResult", "import_module", "load_target", "parse_input", "snake_case"]
