"""Rows 1-2: the compiled module against the same network written by hand.

Row 1 is forward + backward in training mode; row 2 is the batch-1 forward of a deep,
narrow MLP, where the work per layer is tiny and any per-node overhead of the generated
code shows. Each pair is checked to compute the same thing (weights loaded across,
outputs compared) before it is timed.
"""

from __future__ import annotations

from collections.abc import Callable

from .common import SPECS, Goal, Row, Side, interleaved


def _pairs(quick: bool) -> list[tuple[str, Callable, int]]:
    """(name, make, rounds) where make() -> (compiled, twin, input); sizes shrink when quick."""
    import torch
    import torchvision

    import yamlnet
    from tests.twins import GPTTwin, TinyViT

    def vision(spec, twin, batch, pixels, **v):
        return lambda: (yamlnet.compile(spec, **v), twin(), torch.randn(batch, 3, pixels, pixels))

    image, batch = (64, 2) if quick else (224, 8)
    heavy, light = (3, 3) if quick else (40, 60)  # rounds: 15-35 s a pair on 2 cores
    return [
        ("resnet18", vision(SPECS / "resnet18.yaml", torchvision.models.resnet18, batch, image,
                            size=image), heavy),
        ("mobilenet_v2", vision(SPECS / "zoo" / "mobilenet_v2.yaml", torchvision.models.mobilenet_v2,
                                batch, image), heavy),
        ("small ViT (tiny_vit.yaml)", vision(SPECS / "tiny_vit.yaml", TinyViT, 4 if quick else 64, 32),
         light),
        ("GPT (zoo/gpt.yaml)", lambda: (yamlnet.compile(SPECS / "zoo" / "gpt.yaml"), GPTTwin(),
                                        torch.randint(0, 512, (2, 32) if quick else (8, 128))), light),
    ]  # fmt: skip


def same_network(ours, twin, x, tol: float = 1e-4) -> None:
    """Load our weights into the twin (strict) and check the outputs agree."""
    import torch

    twin.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), twin.eval()
    with torch.no_grad():
        diff = (ours(x) - twin(x)).abs().max().item()
    if diff > tol:
        raise RuntimeError(f"the pair does not compute the same network: max difference {diff:g}")
    ours.train(), twin.train()


def _step(model, x) -> Callable[[], None]:
    def step() -> None:
        model(x).float().sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def forward_backward_rows(quick: bool) -> list[Row]:
    """Row 1: forward+backward seconds, compiled spec / hand-written twin (<= 1.02)."""
    rows = []
    for k, (name, make, repeat) in enumerate(_pairs(quick)):
        ours, twin, x = make()
        same_network(ours, twin, x)
        t = interleaved({"ours": _step(ours, x), "twin": _step(twin, x)}, repeat)
        what = f"forward+backward, {name}, input {list(x.shape)}"
        rows.append(Row(f"1{'abcd'[k]}", what, _ms("compiled spec", t["ours"]),
                        _ms("hand-written", t["twin"]), Goal("<=", 1.02)))  # fmt: skip
    return rows


DEEP_MLP = """\
yamlnet: 1
name: deep_mlp
vars: {depth: 200, width: 8}
inputs:
  x: [N, "${width}"]
nodes:
  layers:
    nodes:
      - {block: layer, repeat: "${depth}", splice: true}   # layers.0 Linear, layers.1 ReLU, ...
outputs: {y: layers}
blocks:
  layer:
    nodes:
      - {op: Linear, out_features: "${width}"}
      - {op: ReLU}
"""


def deep_mlp_twin(depth: int = 200, width: int = 8):
    """The same MLP by hand: a ModuleList and a loop (state_dict keys as the spec's)."""
    from torch import nn

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU()))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    return Loop()


def per_node_rows(quick: bool) -> list[Row]:
    """Row 2: batch-1 forward of a 200-layer width-8 MLP, compiled / ModuleList loop (<= 1.05);
    beside it, for scale, the same loop traced by torch.fx and as an nn.Sequential."""
    import torch

    import yamlnet

    ours, loop = yamlnet.compile(DEEP_MLP), deep_mlp_twin()
    x = torch.randn(1, 8)
    same_network(ours, loop, x)
    sides = {"ours": ours, "loop": loop, "fx": torch.fx.symbolic_trace(loop),
             "seq": torch.nn.Sequential(*loop.layers)}  # fmt: skip
    with torch.no_grad():
        t = interleaved({k: (lambda m=m: m(x)) for k, m in sides.items()}, 5 if quick else 100,
                        number=20)  # fmt: skip
    what = "batch-1 forward (no_grad), 200-layer width-8 MLP"
    base = _ms("ModuleList loop", t["loop"])
    return [Row("2", what, _ms("compiled spec", t["ours"]), base, Goal("<=", 1.05)),
            Row("2fx", what + ", for scale", _ms("torch.fx.symbolic_trace(loop)", t["fx"]), base),
            Row("2seq", what + ", for scale", _ms("nn.Sequential", t["seq"]), base)]  # fmt: skip


def _ms(label: str, seconds: tuple[float, ...]) -> Side:
    return Side(label, tuple(s * 1e3 for s in seconds), "ms")
