"""Sequence-to-sequence pairs for teacher forcing, from token files or a synthetic task
(reverse, copy or sort random tokens): the `seq2seq` source. The file source checks every
line when it is built, so a bad token stops a run in its first seconds with file:line.

Token ids: 0 pads, 1 begins a sequence (BOS), 2 ends one (EOS); real tokens start at 3.
"""

from __future__ import annotations

import os
import re

import torch

from .data import Fields, Splits, Table, register_dataset, split
from .dense import MAX_VALUES
from .errors import ConfigError
from .sources import SPLIT_ARGS

__all__ = ["shift_right", "PAD_ID", "BOS_ID", "EOS_ID", "FIRST_TOKEN"]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_TOKEN = 3  # the first id of a real token


# -- sequence to sequence ----------------------------------------------------------------

_PATH = {"type": ["string", "null"], "default": None}
TASKS = {"reverse": lambda x: x.flip(-1), "copy": lambda x: x.clone(),
         "sort": lambda x: x.sort(dim=-1).values}  # fmt: skip


@register_dataset("seq2seq", args={
    "source_path": {**_PATH, "description": "one sequence of token ids (>= 3) a line; "
                                            "null: a synthetic task"},
    "target_path": {**_PATH, "description": "line k is the target of source_path's line k"},
    "val_source_path": {**_PATH, "description": "null: hold out val_fraction of the pairs"},
    "val_target_path": _PATH,
    **SPLIT_ARGS,
    "max_length": {"type": "integer", "minimum": 2, "default": 512,
                   "description": "the longest source, and target with EOS, allowed"},
    "task": {"enum": list(TASKS), "default": "reverse", "description": "the synthetic task"},
    "length": {"type": "integer", "minimum": 1, "default": 8,
               "description": "synthetic: tokens per sequence"},
    "vocab": {"type": "integer", "minimum": FIRST_TOKEN + 1, "default": 20,
              "description": "synthetic: real tokens are 3..vocab-1"},
    "size": {"type": "integer", "minimum": 1, "default": 8192},
    "val_size": {"type": "integer", "minimum": 0, "default": 512},
    "seed": {"type": "integer", "default": 0},
}, doc="sequence-to-sequence pairs with teacher forcing (0 pad, 1 BOS, 2 EOS), from token "
       "files or a synthetic reverse/copy/sort task")  # fmt: skip
def _seq2seq(args: dict) -> Splits:
    _check_path_pairs(args)
    return _synthetic_pairs(args) if args["source_path"] is None else _file_pairs(args)


def shift_right(labels: torch.Tensor) -> torch.Tensor:
    """The decoder's input under teacher forcing, [BOS] + labels[:-1] on the last dim: at
    step t the decoder sees the target up to t-1 and is scored on labels[t].

    >>> shift_right(torch.tensor([5, 6, 2, 0])).tolist()
    [1, 5, 6, 2]
    """
    bos = torch.full_like(labels[..., :1], BOS_ID)
    return torch.cat([bos, labels[..., :-1]], dim=-1)


def _seq_fields(source_vocab: int, target_vocab: int) -> Fields:
    info = {"source_vocab": source_vocab, "target_vocab": target_vocab,
            "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID}  # fmt: skip
    return Fields(("source", "target"), ("labels",), {}, info=info)


def _check_path_pairs(args: dict) -> None:
    """A source file without its target file (or the reverse) is a mistake, not a request
    for the synthetic task."""
    for src, tgt in (("source_path", "target_path"), ("val_source_path", "val_target_path")):
        if (args[src] is None) != (args[tgt] is None):
            given, missing = (src, tgt) if args[tgt] is None else (tgt, src)
            raise ConfigError(f"{given} is set but {missing} is not", path=f"data.{missing}",
                              hint="line k of one file pairs with line k of the other")  # fmt: skip
    if args["source_path"] is None and args["val_source_path"] is not None:
        raise ConfigError("val_source_path is set but source_path is not",
                          path="data.source_path")  # fmt: skip


def _synthetic_pairs(args: dict) -> Splits:
    n, n_val, length = args["size"], args["val_size"], args["length"]
    if (n + n_val) * (3 * length + 2) > MAX_VALUES:
        raise ConfigError("synthetic data over 2**28 values (1 GiB); lower size or length",
                          path="data.size")  # fmt: skip
    g = torch.Generator().manual_seed(args["seed"])
    train = _task_table(n, args, g)
    val = _task_table(n_val, args, g) if n_val else None  # after train: train ignores val_size
    return Splits(train, val, _seq_fields(args["vocab"], args["vocab"]))


def _task_table(n: int, args: dict, g: torch.Generator) -> Table:
    source = torch.randint(FIRST_TOKEN, args["vocab"], (n, args["length"]), generator=g)  # [N, S]
    eos = torch.full((n, 1), EOS_ID, dtype=torch.int64)
    labels = torch.cat([TASKS[args["task"]](source), eos], dim=1)  # [N, T], T = S + 1
    return Table({"source": source, "target": shift_right(labels), "labels": labels})


def _file_pairs(args: dict) -> Splits:
    """Both splits are padded to the same S and T, the longest in either, so a model sized
    from one batch fits every batch."""
    train = _read_pairs(args, "source_path", "target_path")
    val = _read_pairs(args, "val_source_path", "val_target_path") if args["val_source_path"] else []
    every = train + val
    s = max(1, max(len(src) for src, _ in every))
    t = max(len(tgt) for _, tgt in every) + 1  # room for EOS
    fields = _seq_fields(_vocab([src for src, _ in every], FIRST_TOKEN),
                         _vocab([tgt for _, tgt in every], EOS_ID + 1))  # fmt: skip
    whole = _encode(train, s, t)
    if val:
        return Splits(whole, _encode(val, s, t), fields)
    return Splits(*split(whole, args["val_fraction"], args["split_seed"]), fields)


def _vocab(seqs: list[list[int]], least: int) -> int:
    return max(least, max((max(seq) + 1 for seq in seqs if seq), default=0))


def _encode(pairs: list[tuple[list[int], list[int]]], s: int, t: int) -> Table:
    source = torch.zeros(len(pairs), s, dtype=torch.int64)  # [N, S], PAD after the tokens
    labels = torch.zeros(len(pairs), t, dtype=torch.int64)  # [N, T]: tokens, EOS, PAD
    for i, (src, tgt) in enumerate(pairs):
        source[i, : len(src)] = torch.tensor(src, dtype=torch.int64)
        labels[i, : len(tgt) + 1] = torch.tensor(tgt + [EOS_ID], dtype=torch.int64)
    return Table({"source": source, "target": shift_right(labels), "labels": labels})


def _read_pairs(args: dict, src_key: str, tgt_key: str) -> list[tuple[list[int], list[int]]]:
    src = _read_tokens(args[src_key], src_key, 0, args["max_length"])
    tgt = _read_tokens(args[tgt_key], tgt_key, 1, args["max_length"])  # 1: room for EOS
    if len(src) != len(tgt):
        raise ConfigError(f"{args[src_key]} has {len(src)} lines but {args[tgt_key]} has "
                          f"{len(tgt)}", path=f"data.{tgt_key}",
                          hint="line k of one file is paired with line k of the other")  # fmt: skip
    return list(zip(src, tgt, strict=True))


def _read_tokens(path: str, key: str, extra: int, max_length: int) -> list[list[int]]:
    """One list of ids per line; `extra` positions (EOS) are added later."""
    if not os.path.isfile(path):
        raise ConfigError(f"no such file: {path}", path=f"data.{key}")
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines:
        raise ConfigError(f"{path} is empty", path=f"data.{key}", hint="one sequence a line")
    return [_parse_line(text, f"{path}:{k}", key, extra, max_length)
            for k, text in enumerate(lines, 1)]  # fmt: skip


def _parse_line(line: str, at: str, key: str, extra: int, max_length: int) -> list[int]:
    ids = []
    for token in line.split():
        if not re.fullmatch(r"[+-]?[0-9]+", token):
            raise ConfigError(f"{at}: '{token}' is not an integer token id", path=f"data.{key}",
                              hint="tokens are whitespace-separated integers >= 3")  # fmt: skip
        ids.append(int(token))
        if ids[-1] < FIRST_TOKEN:
            raise ConfigError(f"{at}: token id {ids[-1]} is reserved or invalid",
                              path=f"data.{key}", hint="0 is padding, 1 BOS, 2 EOS: real tokens "
                              "start at 3 (add 3 to every id)")  # fmt: skip
    if len(ids) + extra > max_length:
        with_eos = " + EOS" if extra else ""
        raise ConfigError(f"{at}: {len(ids)} tokens{with_eos} exceed max_length {max_length}",
                          path=f"data.{key}", hint="raise max_length or shorten the line")  # fmt: skip
    return ids
