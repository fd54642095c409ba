"""Row 10: rows 1, 5 and 7 on a CUDA device in bf16-mixed precision, and the speed-up of
`train.compile` (torch.compile) over eager — measured only where a CUDA device is
present; elsewhere the table says there was none.

Forward+backward and training run under bf16 autocast on both sides; peak memory is
`torch.cuda.max_memory_allocated` over one run of each side, in this process.
"""

from __future__ import annotations

from dataclasses import replace

from .common import Goal, Row, Side, interleaved, rounds
from .training import Work, heavy, plain_side, yamlnet_side

CUDA = {"train.device": "cuda", "train.precision": "bf16-mixed"}


def gpu_rows(quick: bool):
    import torch

    if not torch.cuda.is_available():
        return ("Row 10 (GPU: rows 1, 5 and 7 on CUDA in bf16-mixed, and torch.compile's "
                "speed-up): not measured — no CUDA device on this machine.")  # fmt: skip
    name = torch.cuda.get_device_name(0)
    work = replace(heavy(quick), overrides={**heavy(quick).overrides, **CUDA})
    return [_forward_backward(quick, name), *_training(work, quick, name), _memory(work, name),
            _compiled(work, quick, name)]  # fmt: skip


def _forward_backward(quick: bool, gpu: str) -> Row:
    import torch
    import torchvision

    import yamlnet

    from .common import SPECS
    from .models import same_network

    ours = yamlnet.compile(SPECS / "resnet18.yaml").cuda()
    twin = torchvision.models.resnet18().cuda()
    x = torch.randn(2 if quick else 64, 3, 224, 224, device="cuda")
    same_network(ours, twin, x, tol=5e-2)  # cuDNN may use TF32: a check that the weights match

    def step(model):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(x).float().sum().backward()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()

        return run

    t = interleaved({"ours": step(ours), "twin": step(twin)}, 3 if quick else 30, warmup=3)
    ms = {k: tuple(s * 1e3 for s in v) for k, v in t.items()}
    return Row("10a", f"GPU ({gpu}) forward+backward bf16, resnet18, input {list(x.shape)}",
               Side("compiled spec", ms["ours"], "ms"), Side("torchvision", ms["twin"], "ms"),
               Goal("<=", 1.02))  # fmt: skip


def _training(work: Work, quick: bool, gpu: str) -> list[Row]:
    rate = rounds({"ours": lambda: yamlnet_side(work), "plain": lambda: plain_side(work)}, 1 if quick else 3)
    return [Row("10b", f"GPU ({gpu}) training steps/s bf16-mixed, {work.name}",
                Side("yamlnet train", rate["ours"], "steps/s"),
                Side("plain loop", rate["plain"], "steps/s"), Goal(">=", 0.97))]  # fmt: skip


def _memory(work: Work, gpu: str) -> Row:
    import torch

    def peak(side) -> float:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        side(work)
        return torch.cuda.max_memory_allocated() / 2**20

    mb = rounds({"ours": lambda: peak(yamlnet_side), "plain": lambda: peak(plain_side)}, 1, warmup=0)
    return Row("10c", f"GPU ({gpu}) peak memory allocated, {work.name}", Side("yamlnet train", mb["ours"], "MB"),
               Side("plain loop", mb["plain"], "MB"), Goal("<=", 1.05))  # fmt: skip


def _compiled(work: Work, quick: bool, gpu: str) -> Row:
    compiled = replace(work, overrides={**work.overrides, "train.compile": True})
    rate = rounds({"compiled": lambda: yamlnet_side(compiled), "eager": lambda: yamlnet_side(work)},
                  1 if quick else 2)
    return Row("10d", f"GPU ({gpu}) `train.compile: true` speed-up, {work.name}",
               Side("torch.compile", rate["compiled"], "steps/s"), Side("eager", rate["eager"], "steps/s"))
