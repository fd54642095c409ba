"""Dense sources: semantic segmentation (an image and a class id per pixel) from a folder or
drawn synthetically. Each registers itself in `data.DATASETS`; sequence-to-sequence pairs
are in seq2seq.py.

The folder and file sources check everything they can when they are built, not when a
DataLoader worker first meets a bad file: a run should stop in its first seconds with the
file's name, not an hour in with a shape error from a collate function.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import (
    IMAGE,
    MASK,
    Fields,
    ImageTooLarge,
    Splits,
    Table,
    open_image,
    register_dataset,
    split,
)
from .errors import ConfigError
from .sources import SPLIT_ARGS

__all__ = ["SegmentationFolder", "MAX_VALUES"]

MAX_VALUES = 1 << 28  # synthetic data in memory: 2**28 values (1 GiB as float32)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")  # lossless, so ids stay ids
LOSSY_EXTS = (".jpg", ".jpeg")  # listed as masks only to be refused by name
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L")  # PIL's modes of 16-bit grayscale
MASK_MODES = ("1", "L", "P", "I", *SIXTEEN_BIT)  # PIL's one-channel integer modes
NAMED = 3  # unpaired files a message names before "and N more"
PAIRING = "an image and its mask share a file stem: images/a.jpg <-> masks/a.png"


def _seg_fields(classes: int | None) -> Fields:
    return Fields(("image",), ("mask",), {"image": IMAGE, "mask": MASK}, info={"classes": classes})


# -- segmentation from a folder ---------------------------------------------------------


@register_dataset("segmentation_folder", required=("root",), args={
    "root": {"type": "string", "description": "a folder holding images/ and masks/"},
    "val_root": {"type": ["string", "null"], "default": None,
                 "description": "validation folder, laid out alike; null: hold out val_fraction"},
    **SPLIT_ARGS,
    "classes": {"type": ["integer", "null"], "minimum": 1, "default": None,
                "description": "mask ids must be below this (checked up front); null: unchecked"},
    "ignore_index": {"type": ["integer", "null"], "minimum": 0, "default": 255,
                     "description": "a mask value meaning 'no label', allowed beyond classes"},
    "channels": {"enum": [1, 3, None], "default": None,
                 "description": "decode images to 1 or 3 channels; null: as stored"},
}, doc="images and their per-pixel class masks (images/a.jpg <-> masks/a.png)")  # fmt: skip
def _segmentation_folder(args: dict) -> Splits:
    train = _folder(args, "root")
    fields = _seg_fields(args["classes"])
    if args["val_root"]:
        return Splits(train, _folder(args, "val_root"), fields)
    return Splits(*split(train, args["val_fraction"], args["split_seed"]), fields)


class SegmentationFolder(Dataset):
    """Checked (image, mask) file pairs as {image: float32 [C, H, W] in [0, 1], mask: int64
    [H, W]}. Holds paths only, so it pickles cheaply to DataLoader workers."""

    def __init__(self, pairs: list[tuple[str, str]], channels: int | None):
        self.pairs, self.channels = pairs, channels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        mask = torch.from_numpy(_mask_array(mask_path).astype(np.int64))  # [H, W]
        return {"image": _read_image(image_path, self.channels), "mask": mask}


def _folder(args: dict, key: str) -> SegmentationFolder:
    pairs = _pairs(args[key], key)
    for image, mask in pairs:
        _check_pair(image, mask, args, key)
    return SegmentationFolder(pairs, args["channels"])


def _read_image(path: str, channels: int | None) -> torch.Tensor:
    """[C, H, W] float32 in [0, 1]. 16-bit grayscale is scaled here: PIL's conversions
    would clip it to 8 bits."""
    with open_image(path) as im:
        if im.mode in SIXTEEN_BIT:
            gray = torch.from_numpy(np.asarray(im).astype(np.float32) / 65535)  # [H, W]
            return gray.expand(channels or 1, *gray.shape).clone()
        pixels = torch.from_numpy(np.array(im.convert(_read_mode(im, channels))))  # [H, W(, C)]
    pixels = pixels.float() / 255
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _read_mode(im, channels: int | None) -> str:
    """The PIL mode to decode to: as asked, or as stored where that is plain 8-bit gray or
    colour; a palette image means its colours, not its indices."""
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    if im.mode in ("1", "L", "LA", "RGB", "RGBA"):
        return "L" if im.mode == "1" else im.mode
    return "RGBA" if "transparency" in im.info else "RGB"


def _pairs(root: str, key: str) -> list[tuple[str, str]]:
    """(image, mask) paths under `root`, paired by file stem, in stem order."""
    where = f"data.{key}"
    if not os.path.isdir(root):
        raise ConfigError(f"no such folder: {root}", path=where)
    for sub in ("images", "masks"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise ConfigError(f"{root} has no {sub}/ sub-folder", path=where, hint=PAIRING)
    images = _by_stem(os.path.join(root, "images"), IMAGE_EXTS, where)
    masks = _by_stem(os.path.join(root, "masks"), MASK_EXTS + LOSSY_EXTS, where)
    if not images:
        raise ConfigError(f"no images in {os.path.join(root, 'images')}", path=where,
                          hint="image files: " + ", ".join(IMAGE_EXTS))  # fmt: skip
    _refuse_unpaired(images, masks, "image", "a mask", where)
    _refuse_unpaired(masks, images, "mask", "an image", where)
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def _by_stem(folder: str, exts: tuple[str, ...], where: str) -> dict[str, str]:
    """stem -> path of the files in `folder` with one of `exts` (other files are ignored)."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in exts:
            continue
        if stem in found:
            first = os.path.basename(found[stem])
            raise ConfigError(f"two files with the stem '{stem}' in {folder}: {first}, {name}",
                              path=where, hint=PAIRING)  # fmt: skip
        found[stem] = os.path.join(folder, name)
    return found


def _refuse_unpaired(have: dict, other: dict, kind: str, missing: str, where: str) -> None:
    lonely = [os.path.basename(path) for stem, path in sorted(have.items()) if stem not in other]
    if lonely:
        more = f" and {len(lonely) - NAMED} more" if len(lonely) > NAMED else ""
        plural = "s" if len(lonely) > 1 else ""
        raise ConfigError(f"{len(lonely)} {kind}{plural} without {missing}: "
                          + ", ".join(lonely[:NAMED]) + more, path=where, hint=PAIRING)  # fmt: skip


def _check_pair(image: str, mask: str, args: dict, key: str) -> None:
    """Refuse an image without an agreed [0, 1] scale, and a mask that cannot hold this
    image's class ids.

    Sizes and modes come from the file headers; a mask is decoded (once) only to check its
    ids against `classes`."""
    where = f"data.{key}"
    if os.path.splitext(mask)[1].lower() in LOSSY_EXTS:
        raise ConfigError(f"{mask}: a JPEG mask; lossy compression changes class ids at edges",
                          path=where, hint="save masks as PNG")  # fmt: skip
    (width, height), image_mode = _header(image, where)
    (mask_width, mask_height), mask_mode = _header(mask, where)
    if image_mode in ("I", "F"):
        raise ConfigError(f"{image} has PIL mode {image_mode} (32-bit), which has no [0, 1] scale",
                          path=where, hint="save it as 8- or 16-bit")  # fmt: skip
    if (mask_width, mask_height) != (width, height):
        raise ConfigError(f"{mask} is {mask_height}x{mask_width} but its image {image} is "
                          f"{height}x{width} (HxW)", path=where, hint="a mask labels every pixel "
                          "of its image, so the two have one size")  # fmt: skip
    if mask_mode not in MASK_MODES:
        raise ConfigError(f"{mask} has PIL mode {mask_mode}, not a single channel", path=where,
                          hint="a mask holds one class id per pixel: save it as 8-bit grayscale "
                               "('L') or palette ('P') PNG")  # fmt: skip
    if args["classes"] is not None:
        _check_ids(mask, args["classes"], args["ignore_index"], where)


def _header(path: str, where: str) -> tuple[tuple[int, int], str]:
    """((width, height), PIL mode) without decoding the pixels."""
    try:
        with open_image(path) as im:
            return im.size, im.mode
    except ImageTooLarge as err:
        raise ConfigError(str(err), path=where) from None
    except OSError as err:  # PIL's UnidentifiedImageError is one
        raise ConfigError(f"cannot read {path}: {err}", path=where) from None


def _check_ids(mask: str, classes: int, ignore: int | None, where: str) -> None:
    ids = np.unique(_mask_array(mask))
    bad = ids[(ids < 0) | (ids >= classes)]
    if ignore is not None:
        bad = bad[bad != ignore]
    if bad.size:
        allowed = f"0..{classes - 1}" + ("" if ignore is None else f" and ignore_index {ignore}")
        raise ConfigError(f"{mask} holds class id {int(bad[0])}, but classes is {classes}",
                          path=where, hint=f"mask ids allowed: {allowed}")  # fmt: skip


def _mask_array(path: str) -> np.ndarray:
    """A mask's class ids, [H, W]: palette masks give their indices, not their colours."""
    with open_image(path) as im:
        return np.asarray(im)


# -- synthetic segmentation -------------------------------------------------------------


@register_dataset("synthetic_segmentation", args={
    "size": {"type": "integer", "minimum": 1, "default": 512},
    "val_size": {"type": "integer", "minimum": 0, "default": 128},
    "image_size": {"type": "array", "items": {"type": "integer", "minimum": 4}, "minItems": 2,
                   "maxItems": 2, "default": [32, 32], "description": "[H, W]"},
    "channels": {"type": "integer", "minimum": 1, "default": 3},
    "classes": {"type": "integer", "minimum": 2, "default": 2,
                "description": "class 0 is the background; shapes are of classes 1.."},
    "seed": {"type": "integer", "default": 0},
}, doc="noisy images of discs and rectangles and their class masks (U-Net quick start)")  # fmt: skip
def _synthetic_segmentation(args: dict) -> Splits:
    """Train and val come from one generator in turn, so the training set does not change
    with val_size."""
    (h, w), c, n, n_val = args["image_size"], args["channels"], args["size"], args["val_size"]
    if (n + n_val) * (c + 1) * h * w > MAX_VALUES:
        raise ConfigError("synthetic data over 2**28 values (1 GiB); lower size or image_size",
                          path="data.size")  # fmt: skip
    g = torch.Generator().manual_seed(args["seed"])
    train = _scenes(n, args, g)
    return Splits(train, _scenes(n_val, args, g) if n_val else None, _seg_fields(args["classes"]))


def _scenes(n: int, args: dict, g: torch.Generator) -> Table:
    """n images [n, C, H, W] and masks [n, H, W]: each pixel takes its class's colour plus
    noise well below the distance between colours, so a small U-Net separates them."""
    (h, w), classes = args["image_size"], args["classes"]
    mask = _shapes(n, h, w, classes, g)  # [n, H, W]
    palette, spacing = _palette(classes, args["channels"])  # [classes, C]
    clean = palette[mask].permute(0, 3, 1, 2)  # [n, C, H, W]
    noise = 0.2 * spacing * torch.randn(clean.shape, generator=g)
    return Table({"image": (clean + noise).clamp(0, 1), "mask": mask})


def _shapes(n: int, h: int, w: int, classes: int, g: torch.Generator) -> torch.Tensor:
    """Masks [n, H, W] of 1-3 filled discs or rectangles on background 0; later shapes
    cover earlier ones. Every slot draws its numbers, used or not, to keep the stream fixed."""
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5  # pixel centres
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    side = min(h, w)
    count = torch.randint(1, 4, (n, 1, 1), generator=g)
    mask = torch.zeros(n, h, w, dtype=torch.int64)
    for slot in range(3):
        cy, cx, disc = torch.rand(3, n, 1, 1, generator=g)
        ry, rx = side / 8 + torch.rand(2, n, 1, 1, generator=g) * side / 8  # half sizes
        cls = torch.randint(1, classes, (n, 1, 1), generator=g)
        dy, dx = yy - cy * h, xx - cx * w  # [n, H, 1], [n, 1, W]
        in_disc = dy**2 + dx**2 <= ry**2
        in_rect = (dy.abs() <= ry) & (dx.abs() <= rx)
        inside = torch.where(disc < 0.5, in_disc, in_rect) & (slot < count)  # [n, H, W]
        mask = torch.where(inside, cls, mask)
    return mask


def _palette(classes: int, channels: int) -> tuple[torch.Tensor, float]:
    """A colour per class ([classes, C], points of a grid in [0.15, 0.85]^C) and the grid's
    spacing: the fewest levels per channel that give every class its own colour."""
    levels = 2
    while levels**channels < classes:
        levels += 1
    grid = list(itertools.islice(itertools.product(range(levels), repeat=channels), classes))
    spacing = 0.7 / (levels - 1)
    return 0.15 + spacing * torch.tensor(grid, dtype=torch.float32), spacing
