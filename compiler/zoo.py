"""The model zoo by name: `zoo:resnet` is specs/zoo/resnet.yaml wherever yamlnet is
installed (a git checkout, or the wheel, which carries specs/ as package data), and
`zoo:resnet50` is that file with the variables of torchvision's resnet50. The example
specs beside the zoo go by name too: `zoo:digits_cnn` is the quick start.

    >>> zoo_spec("zoo:resnet50")[1]
    {'depth': 50}
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from .errors import LoadError, Location, did_you_mean

__all__ = ["PREFIX", "VARIANTS", "specs_dir", "zoo_dir", "zoo_spec", "is_zoo_name", "families", "examples"]

PREFIX = "zoo:"


def _depths(stem: str, depths, var: str = "depth") -> dict[str, dict]:
    return {f"{stem}{d}": {var: d} for d in depths}


# family -> variant -> the variables that make it (torchvision's model names, where the
# family is torchvision's; each file's header comment says the same)
VARIANTS: dict[str, dict[str, dict]] = {
    "resnet": {**_depths("resnet", (18, 34, 50, 101, 152)),
               "resnext50_32x4d": {"depth": 50, "groups": 32, "width_per_group": 4},
               "resnext101_32x8d": {"depth": 101, "groups": 32, "width_per_group": 8},
               "resnext101_64x4d": {"depth": 101, "groups": 64, "width_per_group": 4},
               "wide_resnet50_2": {"depth": 50, "width_per_group": 128},
               "wide_resnet101_2": {"depth": 101, "width_per_group": 128}},
    "vgg": {**_depths("vgg", (11, 13, 16, 19)),
            **{f"vgg{d}_bn": {"depth": d, "batch_norm": True} for d in (11, 13, 16, 19)}},
    "mobilenet_v2": {"mobilenet_v2": {}},
    "efficientnet": {f"efficientnet_{v}": {"variant": v} for v in ("b0", "b1", "b2", "b3")},
    "densenet": _depths("densenet", (121, 161, 169, 201)),
    "convnext": {f"convnext_{s}": {"size": s} for s in ("tiny", "small")},
    "vit": {"vit_b_16": {"patch": 16}, "vit_b_32": {"patch": 32}},
    "regnet": {f"regnet_{v}": {"variant": v} for v in (
        "x_400mf", "x_800mf", "x_1_6gf", "x_3_2gf", "x_8gf", "x_16gf", "x_32gf",
        "y_400mf", "y_800mf", "y_1_6gf", "y_3_2gf", "y_8gf", "y_16gf", "y_32gf", "y_128gf")},
    "swin": {"swin_t": {},
             "swin_s": {"depths": [2, 2, 18, 2], "stochastic_depth_prob": 0.3},
             "swin_b": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                        "stochastic_depth_prob": 0.5}},
    "gpt": {}, "unet": {}, "lstm_seq2seq": {},
}  # fmt: skip


@cache
def specs_dir() -> Path:
    """specs/: beside the compiler package in a checkout (compiler/ and specs/ at the root)
    and in an installed wheel (yamlnet/compiler/ and yamlnet/specs/) alike."""
    return Path(__file__).resolve().parent.parent / "specs"


@cache
def _variant_index() -> dict[str, tuple[str, dict]]:
    """variant -> (its family, its variables)."""
    return {v: (family, sets) for family, table in VARIANTS.items() for v, sets in table.items()}


def zoo_dir() -> Path:
    return specs_dir() / "zoo"


def is_zoo_name(text: str | os.PathLike) -> bool:
    return os.fspath(text).startswith(PREFIX)


def zoo_spec(name: str | os.PathLike, loc: Location | None = None) -> tuple[Path, dict]:
    """'zoo:resnet' -> (its file, {}); 'zoo:resnet50' -> (resnet's file, {'depth': 50})."""
    wanted = os.fspath(name)[len(PREFIX):].removesuffix(".yaml")
    variants = _variant_index()
    if wanted in VARIANTS:
        family, sets = wanted, {}
    elif wanted in variants:
        family, sets = variants[wanted]
    elif wanted in examples():
        return specs_dir() / f"{wanted}.yaml", {}
    else:
        hint = did_you_mean(wanted, [*VARIANTS, *variants, *examples()]) or "see `yamlnet zoo` for the names"
        raise LoadError(f"no zoo model '{wanted}' ({hint})", loc or Location(os.fspath(name), 1, 1))
    path = zoo_dir() / f"{family}.yaml"
    if not path.is_file():
        raise LoadError(f"the zoo file {path} is missing from this installation", loc or Location(os.fspath(name), 1, 1))
    return path, dict(sets)


def examples() -> list[str]:
    """The example specs beside the zoo (specs/*.yaml: digits_cnn, the quick start, ...),
    named like zoo families: `zoo:digits_cnn`."""
    taken = {*VARIANTS, *_variant_index()}  # the zoo's names win
    return sorted(p.stem for p in specs_dir().glob("*.yaml") if p.stem.isidentifier() and p.stem not in taken)


def families() -> list[dict]:
    """Each family: name, file, description (the spec's own) and its variants."""
    from .load import load_spec_source  # (load imports this module)

    out = []
    for family, table in VARIANTS.items():
        path = zoo_dir() / f"{family}.yaml"
        description = load_spec_source(path).main.data.get("description", "")
        out.append({"family": family, "spec": f"{PREFIX}{family}", "file": os.fspath(path),
                    "description": description, "variants": dict(table)})  # fmt: skip
    return out
