"""Rows 11-13: training speed on the newer tasks against the loop one writes by hand — a
GPT on byte tokens (tokens/s, against a nanoGPT-style loop), a U-Net on synthetic
segmentation, and a small ResNet on a folder of PNGs (against torchvision's
`ImageFolder` and `DataLoader`).

Measured as row 5 is (training.py): the sides train the same compiled model (same
initial weights) with the same optimizer on the same samples, alternate round by round
after a warm-up round, and report the steady rate between steps `short` and `steps` of
one run. Like row 5 every side keeps a resumable checkpoint at each epoch's end (the
windows hold several), and yamlnet runs as a user gets it — deterministic algorithms,
metrics.csv and TensorBoard rows every 10 steps, the NaN check every step — with
validation, metrics and the LR schedule off on both sides. The benchmark writes its own
data into a temporary folder: the text (this repository's README, as ASCII, repeated to
a whole number of batches) and the PNGs.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from .common import ROOT, SPECS, Goal, Row, Side, rounds
from .training import NO_VAL, Work, _logged, _model, _setup, plain_loop, yamlnet_side

GPT = {"vocab": 256, "dim": 64, "heads": 4, "layers": 2}  # byte tokens: 256 ids
FLIP = [{"name": "RandomHorizontalFlip"}]  # the image rows' augmentation, on both sides
FOLDER_WORKERS = {"a": 0, "b": 2}  # row 13's sub-rows: DataLoader workers


# -- the jobs ---------------------------------------------------------------------------


def language_model(root: Path, quick: bool) -> Work:
    """zoo/gpt.yaml (dim 64, 2 layers, block 64) on byte tokens of a text written to
    `root`, batch 16, the spec's AdamW; an epoch is 40 steps (quick: 4)."""
    batch, block, epoch = (4, 16, 4) if quick else (16, 64, 40)
    text = root / "text.txt"
    text.write_bytes(_ascii_text(epoch * batch * block + 1))  # blocks of B + 1: targets run one on
    return Work(f"GPT (zoo/gpt.yaml) dim 64, 2 layers, block {block}, byte tokens", SPECS / "zoo" / "gpt.yaml", {
        **GPT, "context": block, "data.path": str(text), "data.cache_dir": str(root / "tokens"),
        "data.block_size": block, "data.batch_size": batch, "data.val_fraction": 0.0,
        "train.val_every_n_steps": None, "train.monitor": None, **NO_VAL, **_logged(quick),
    }, *((10, 2) if quick else (140, 20)), rounds=9)  # fmt: skip


def segmentation(quick: bool) -> Work:
    """zoo/unet.yaml (base 8) on synthetic_segmentation 3x32x32, 2 classes, batch 16, the
    spec's AdamW; an epoch is 16 steps (quick: 4)."""
    size, batch = (32, 8) if quick else (256, 16)
    return Work("U-Net base 8, 3x32x32", SPECS / "zoo" / "unet.yaml", {
        "base": 8, "data.size": size, "data.val_size": 0, "data.batch_size": batch,
        "train.monitor": None, **NO_VAL, **_logged(quick),
    }, *((6, 2) if quick else (120, 20)), rounds=9)  # fmt: skip


def image_folder(root: Path, workers: int, quick: bool) -> Work:
    """resnet18.yaml (width 16, 4 classes, 3x32x32) on the PNGs under `root`, a random
    horizontal flip, batch 32, AdamW; an epoch is 16 steps (quick: 4)."""
    return Work(f"resnet18 width 16 on PNGs, {workers} workers", SPECS / "resnet18.yaml", {
        "classes": 4, "width": 16, "size": 32, "data.dataset": "image_folder",
        "data.root": str(root), "data.val_fraction": 0.0, "data.batch_size": 8 if quick else 32,
        "data.num_workers": workers, "data.transforms": FLIP, "train.loss": "CrossEntropyLoss",
        "train.optimizer": {"name": "AdamW", "lr": 0.001}, **NO_VAL, **_logged(quick),
    }, *((6, 2) if quick else (120, 20)), rounds=7)  # fmt: skip


def _ascii_text(n: int) -> bytes:
    """n bytes of English: this repository's README, non-ASCII characters dropped, repeated."""
    text = re.sub(r"[^\x20-\x7e\n]", "", (ROOT / "README.md").read_text(encoding="utf-8")).encode()
    return (text * (n // len(text) + 1))[:n]


def write_pngs(root: Path, classes: int, per_class: int, size: int = 32) -> None:
    """`classes` folders of `per_class` RGB PNGs each: smooth random colours plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[:, None, None]  # (H, 1, 1)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            top, bottom = rng.uniform(0, 255, (2, 1, 1, 3))
            pixels = top + (bottom - top) * ramp + rng.normal(0, 16, (size, size, 3))  # (H, W, 3)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class_{c}" / f"{i}.png")


# -- the hand-written sides ---------------------------------------------------------------


class TokenBatches:
    """nanoGPT's `get_batch`, an epoch at a time: the token array's non-overlapping blocks
    in a new random order each epoch, `batch` blocks of inputs [B, T] and targets (the
    same tokens one further on) at a time."""

    def __init__(self, ids, block: int, batch: int):
        self.ids, self.block, self.batch = ids, block, batch

    def __iter__(self):
        import torch

        starts = torch.randperm((len(self.ids) - 1) // self.block) * self.block
        for i in range(0, len(starts), self.batch):
            ix = starts[i : i + self.batch].tolist()
            x = torch.stack([self.ids[j : j + self.block] for j in ix])  # (B, T)
            y = torch.stack([self.ids[j + 1 : j + 1 + self.block] for j in ix])  # (B, T)
            yield x, y


def lm_plain_side(work: Work) -> float:
    """The nanoGPT-style loop: byte tokens read from the file with numpy (as nanoGPT's
    prepare.py writes them), `cross_entropy(logits.view(-1, V), targets.view(-1))`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model, cfg, optimizer = _model(work)
    raw = np.frombuffer(Path(cfg.data["path"]).read_bytes(), dtype=np.uint8)
    batches = TokenBatches(torch.from_numpy(raw.astype(np.int64)), cfg.data["block_size"],
                           cfg.data["batch_size"])  # fmt: skip

    def loss_fn(logits, targets):  # logits (B, T, V), targets (B, T)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return plain_loop(work, model, optimizer(model.parameters()), batches, loss_fn)


def folder_plain_side(work: Work) -> float:
    """torchvision's `ImageFolder` with the same transforms (to float in [0, 1], then the
    flip) and a `DataLoader` with as many workers, kept between epochs as yamlnet keeps
    its own; `nn.CrossEntropyLoss`."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    model, cfg, optimizer = _model(work)
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    data = ImageFolder(cfg.data["root"], transform=v2.Compose([*to_float, v2.RandomHorizontalFlip()]))
    workers = cfg.data["num_workers"]
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.data["batch_size"], shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    return plain_loop(work, model, optimizer(model.parameters()), loader, torch.nn.CrossEntropyLoss())


# -- the rows -----------------------------------------------------------------------------


def _window(work: Work) -> str:
    return f"steps {work.short + 1}-{work.steps}; each checkpoints every epoch"


def language_model_rows(quick: bool) -> list[Row]:
    """Row 11: tokens/s of yamlnet / the nanoGPT-style loop (>= 0.97)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = language_model(Path(tmp), quick)
        rate = rounds({"yamlnet": lambda: yamlnet_side(work), "plain": lambda: lm_plain_side(work)},
                      1 if quick else work.rounds, warmup=0 if quick else 1)  # fmt: skip
    tokens = work.overrides["data.batch_size"] * work.overrides["data.block_size"]  # a step's
    per_step = {k: tuple(v * tokens for v in vs) for k, vs in rate.items()}
    return [Row("11", f"language-model training tokens/s, {work.name}, batch "
                f"{work.overrides['data.batch_size']}, AdamW ({_window(work)})",
                Side("yamlnet train", per_step["yamlnet"], "tokens/s"),
                Side("nanoGPT-style loop", per_step["plain"], "tokens/s"), Goal(">=", 0.97))]  # fmt: skip


def segmentation_rows(quick: bool) -> list[Row]:
    """Row 12: steps/s of yamlnet / a plain loop over the same image and mask tensors
    (>= 0.97)."""
    work = segmentation(quick)
    rate = rounds({"yamlnet": lambda: yamlnet_side(work), "plain": lambda: _plain_tensors(work)},
                  1 if quick else work.rounds, warmup=0 if quick else 1)  # fmt: skip
    return [Row("12", f"segmentation training steps/s, {work.name}, synthetic_segmentation, "
                f"batch {work.overrides['data.batch_size']} ({_window(work)})",
                Side("yamlnet train", rate["yamlnet"], "steps/s"),
                Side("plain loop", rate["plain"], "steps/s"), Goal(">=", 0.97))]  # fmt: skip


def _plain_tensors(work: Work) -> float:
    """The plain loop over the source's tensors: scores [N, C, H, W] against masks [N, H, W]."""
    import torch

    model, loader, optimizer = _setup(work)
    return plain_loop(work, model, optimizer(model.parameters()), loader, torch.nn.CrossEntropyLoss())


def image_folder_rows(quick: bool) -> list[Row]:
    """Rows 13a (no loader workers) and 13b (2 workers): steps/s of yamlnet on an
    `image_folder` / ImageFolder + DataLoader (>= 0.97)."""
    per_class = 8 if quick else 128
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(Path(tmp), classes=4, per_class=per_class)
        works = {tag: image_folder(Path(tmp), w, quick) for tag, w in FOLDER_WORKERS.items()}
        sides = {}
        for tag, work in works.items():
            sides[f"yamlnet{tag}"] = lambda work=work: yamlnet_side(work)
            sides[f"plain{tag}"] = lambda work=work: folder_plain_side(work)
        rate = rounds(sides, 1 if quick else works["a"].rounds, warmup=0 if quick else 1)
    return [Row(f"13{tag}", f"image-folder training steps/s, resnet18 width 16 on {4 * per_class} "
                f"3x32x32 PNGs in 4 class folders, random flip, batch {work.overrides['data.batch_size']}, "
                f"{FOLDER_WORKERS[tag]} loader workers ({_window(work)})",
                Side("yamlnet train", rate[f"yamlnet{tag}"], "steps/s"),
                Side("ImageFolder + DataLoader loop", rate[f"plain{tag}"], "steps/s"), Goal(">=", 0.97))
            for tag, work in works.items()]  # fmt: skip
