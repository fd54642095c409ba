"""The `text` source: text files as one token stream for language modelling, cut into
blocks of `block_size` tokens whose targets are the same tokens shifted by one.

Tokens live in a cache file, memory-mapped, so a corpus larger than RAM trains. Files are
read and tokenized in pieces of about `PIECE_BYTES` (never a whole file at once) and the
ids appended to a temporary file that is renamed into the cache when complete; the name
is a hash of the tokenizer and of each file's path, size and mtime, so a later run over
the same files reuses it and an edited file is tokenized again.

Pieces, and the lines a `tokenizers` tokenizer encodes in parallel, are cut after a line
end between two printable ASCII characters where there is one, where byte-level and
whitespace pre-tokenizers split anyway: ids then equal those of encoding each file whole.
A tokenizer that merges across line ends (no pre-tokenizer) may differ at those cuts.
Special tokens a tokenizer file's post-processor adds (BOS, EOS) are left out.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import Fields, Splits, register_dataset
from .errors import ConfigError, first_line

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["TextTokenizer", "TokenSpan", "TokenBlocks", "token_cache_dir", "find_text_files"]

PIECE_BYTES = 1 << 18  # read and decoded at a time (a piece is at most twice this)
MIN_BPE_VOCAB = 257  # the 256 byte symbols and at least one merge
_PRINTABLE = frozenset(range(0x21, 0x7F))  # ASCII that no pre-tokenizer calls whitespace
_LINE_CUTS = re.compile(r"(?<=[!-~]\n)(?=[!-~])")  # after a line end between those
_TOKENIZER_HINT = "tokenizer: byte, bpe, or the path of a tokenizers JSON file (tokenizer.json)"
_PATHS = {"type": ["string", "array"], "items": {"type": "string"}, "minItems": 1}

TEXT_ARGS = {
    "path": {**_PATHS, "description": "a text file, a folder (its files matching pattern, "
                                      "recursively, in sorted order) or a list of these"},
    "pattern": {"type": "string", "default": "*.txt", "description": "fnmatch of folders' files"},
    "val_path": {**_PATHS, "type": ["string", "array", "null"], "default": None,
                 "description": "validation text (same forms as path); null: hold out the "
                                "last val_fraction of the token stream"},
    "val_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.1,
                     "description": "share of the tokens held out (the tail) without val_path"},
    "block_size": {"type": "integer", "minimum": 1, "default": 128,
                   "description": "tokens per sample"},
    "tokenizer": {"type": "string", "default": "byte",
                  "description": "byte (UTF-8 bytes, 256 ids), bpe (byte-level BPE trained on "
                                 "the training text) or the path of a tokenizers JSON file"},
    "vocab_size": {"type": "integer", "minimum": 1, "default": 512,
                   "description": f"tokenizer: bpe only; at least {MIN_BPE_VOCAB}"},
    "cache_dir": {"type": ["string", "null"], "default": None,
                  "description": "null: $YAMLNET_CACHE_DIR, else ~/.cache/yamlnet/tokens"},
}  # fmt: skip


# -- the tokenizer ---------------------------------------------------------------------


class TextTokenizer:
    """Text <-> token ids: UTF-8 bytes (256 ids) or a `tokenizers.Tokenizer`.

    `description` is all it takes to rebuild it ("byte", or the tokenizer's JSON), so a
    checkpoint can carry it and generate text without the original files:

    >>> tok = TextTokenizer.from_description("byte")
    >>> tok.encode("hé"), tok.decode([104, 195, 169])
    ([104, 195, 169], 'hé')
    """

    def __init__(self, hf=None, description: str | None = None):
        self._hf = hf
        self.description = "byte" if hf is None else (description or hf.to_str())
        # one past the largest id, not the count: a vocabulary may have holes
        self.vocab_size = 256 if hf is None else max(hf.get_vocab(True).values(), default=-1) + 1

    @classmethod
    def from_description(cls, desc: str) -> TextTokenizer:
        """The tokenizer a `description` (as in a source's `info["tokenizer"]`) stands for."""
        if desc == "byte":
            return cls()
        if not desc.lstrip().startswith("{"):
            raise ValueError("a tokenizer description is 'byte' or a tokenizers JSON text")
        return cls(_tokenizers("a tokenizers tokenizer").Tokenizer.from_str(desc), desc)

    @property
    def dtype(self) -> type:
        """The narrowest unsigned type that holds every id."""
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text: str) -> list[int]:
        if self._hf is None:
            return list(text.encode("utf-8"))
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Byte level: invalid UTF-8 (a cut multi-byte character) decodes as U+FFFD."""
        ids = [int(i) for i in ids]  # a tensor's or an array's too
        if self._hf is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self._hf.decode(ids, skip_special_tokens=False)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """Ids of consecutive pieces of text, an array a piece. A tokenizers tokenizer gets
        each piece as its lines (cut where pieces are), which it encodes on its own
        threads and about three times faster than one long text."""
        for text in pieces:
            if self._hf is None:
                yield np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
                continue
            encodings = self._hf.encode_batch(_LINE_CUTS.split(text), add_special_tokens=False)
            yield np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.uint32)


def _tokenizers(what: str):
    """The optional `tokenizers` package, or a ConfigError that says how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(f"{what} needs the tokenizers package", path="data.tokenizer",
                          hint="pip install 'yamlnet[text]'") from None  # fmt: skip
    return tokenizers


def load_tokenizer(args: dict, files: list[Path], cache: Path) -> TextTokenizer:
    """The tokenizer `args` ask for; a bpe one is trained on `files` (or found cached)."""
    name = args["tokenizer"]
    if name == "byte":
        return TextTokenizer()
    if name == "bpe":
        return _cached_bpe(files, args["vocab_size"], cache)
    return _tokenizer_file(name)


def _tokenizer_file(name: str) -> TextTokenizer:
    tk = _tokenizers(f"tokenizer file {name}")
    if not os.path.isfile(name):
        raise ConfigError(f"no such tokenizer file: {name}", path="data.tokenizer",
                          hint=_TOKENIZER_HINT)  # fmt: skip
    try:
        hf = tk.Tokenizer.from_file(name)
    except Exception as err:  # tokenizers raises plain Exception for every kind of bad file
        raise ConfigError(f"cannot load the tokenizer file {name}: {first_line(err)}",
                          path="data.tokenizer", hint=_TOKENIZER_HINT) from None  # fmt: skip
    return TextTokenizer(hf)


def _cached_bpe(files: list[Path], vocab_size: int, cache: Path) -> TextTokenizer:
    """A byte-level BPE tokenizer trained on `files`, kept in the cache: training it again
    would cost a pass over the corpus, and its ids must not change between runs."""
    tk = _tokenizers("tokenizer: bpe")
    if vocab_size < MIN_BPE_VOCAB:
        raise ConfigError(f"vocab_size {vocab_size} is too small for tokenizer: bpe; it needs "
                          f"at least {MIN_BPE_VOCAB} (256 byte symbols and one merge)",
                          path="data.vocab_size", hint="for 256 ids: tokenizer: byte")  # fmt: skip
    target = cache / f"bpe-{_key(('bpe', vocab_size, tk.__version__), files)}.json"
    _build_once(target, lambda: _write_atomic(target, lambda fh: fh.write(
        train_bpe(files, vocab_size).to_str().encode("utf-8"))))
    return TextTokenizer(tk.Tokenizer.from_file(str(target)))


def train_bpe(files: list[Path], vocab_size: int):
    """A GPT-2 style byte-level BPE `tokenizers.Tokenizer`, trained streaming over `files`.
    It may end below `vocab_size` when the text has fewer pairs to merge."""
    tk = _tokenizers("tokenizer: bpe")
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    alphabet = tk.pre_tokenizers.ByteLevel.alphabet()  # all 256 bytes, seen in the text or not
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                     show_progress=False)  # fmt: skip
    hf.train_from_iterator(read_text(files, "data.path"), trainer=trainer)
    return hf


# -- files -----------------------------------------------------------------------------


def find_text_files(spec: str | list[str], pattern: str, where: str) -> list[Path]:
    """The files `spec` names, resolved, in order: a file itself; a folder's files whose
    name matches `pattern`, recursively, sorted by relative path."""
    files: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        path = Path(item)
        if path.is_file():
            files.append(path.resolve())
        elif path.is_dir():
            files += _folder_files(path, pattern, where)
        else:
            raise ConfigError(f"no such file or folder: {item}", path=where)
    return files


def _folder_files(root: Path, pattern: str, where: str) -> list[Path]:
    found = [p for p in root.rglob("*") if p.is_file() and fnmatch.fnmatch(p.name, pattern)]
    if not found:
        raise ConfigError(f"no files matching '{pattern}' in the folder {root}", path=where,
                          hint="set data.pattern to the names of the text files")  # fmt: skip
    return [p.resolve() for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]


def read_text(files: list[Path], where: str) -> Iterator[str]:
    """The files' text, file after file, in pieces of about `PIECE_BYTES`; a file that is
    not UTF-8 text stops it with a ConfigError naming the file and the byte offset."""
    for path in files:
        for offset, raw in _pieces(path):
            yield _decode(raw, offset, path, where)


def _pieces(path: Path) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes) pieces that split no UTF-8 character and, where the text
    allows, no pre-token (see the module's docstring)."""
    offset, rest = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(PIECE_BYTES):
            buf = rest + chunk
            cut = _cut(buf)
            if cut:
                yield offset, buf[:cut]
            offset, rest = offset + cut, buf[cut:]
    if rest:
        yield offset, rest


def _cut(buf: bytes) -> int:
    """Where to end a piece in its second half: after a line end between printable ASCII
    characters, else after any line end, else before a UTF-8 lead byte."""
    half = len(buf) // 2
    at = len(buf) - 1
    while (at := buf.rfind(b"\n", half, at)) > 0:
        if buf[at - 1] in _PRINTABLE and buf[at + 1] in _PRINTABLE:
            return at + 1
    at = buf.rfind(b"\n", half)
    if at >= 0:
        return at + 1
    at = len(buf) - 1
    while at > len(buf) - 4 and buf[at] & 0xC0 == 0x80:  # 0b10xxxxxx: a continuation byte
        at -= 1
    return max(at, 0)


def _decode(raw: bytes, offset: int, path: Path, where: str) -> str:
    hint = "the text source reads UTF-8 text files; set data.pattern to leave others out"
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path} is binary: a NUL byte at offset {offset + nul}", path=where,
                          hint=hint)  # fmt: skip
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
                          f"{offset + err.start}", path=where, hint=hint) from None  # fmt: skip


# -- the token cache -------------------------------------------------------------------


def token_cache_dir(setting: str | None = None) -> Path:
    """`cache_dir` if set, else $YAMLNET_CACHE_DIR, else ~/.cache/yamlnet/tokens."""
    chosen = setting or os.environ.get("YAMLNET_CACHE_DIR") or "~/.cache/yamlnet/tokens"
    return Path(chosen).expanduser().absolute()  # the memory maps outlive a chdir


def _check_cache_dir(cache: Path, where: str) -> None:
    """The token cache is a folder, or can be made one: a file on its path is named."""
    for folder in (cache, *cache.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ConfigError(f"the token cache {cache} cannot be made: {folder} is not a folder",
                                  path=where if where.startswith("data.") else "",
                                  hint=f"set {where} to a folder")  # fmt: skip
            return


@dataclass(frozen=True)
class TokenSpan:
    """Tokens [start, stop) of a cache file of `dtype` ids."""

    file: str
    dtype: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def cached_tokens(files: list[Path], tokenizer: TextTokenizer, cache: Path,
                  where: str) -> TokenSpan:  # fmt: skip
    """All of `files`' tokens, from the cache, tokenizing them first if they are not there."""
    dtype = np.dtype(tokenizer.dtype)
    target = cache / f"tokens-{_key(tokenizer.description, files)}.{dtype.name}"
    _build_once(target, lambda: write_tokens(files, tokenizer, target, where))
    n = target.stat().st_size // dtype.itemsize
    if n == 0:
        more = f" and {len(files) - 1} more files" if len(files) > 1 else ""
        raise ConfigError(f"no text: 0 tokens in {files[0]}{more}", path=where)
    return TokenSpan(str(target), dtype.name, 0, n)


def write_tokens(files: list[Path], tokenizer: TextTokenizer, target: Path, where: str) -> None:
    """Tokenize `files` streaming into `target` (appearing only once complete)."""

    def write(fh) -> None:
        for ids in tokenizer.encode_stream(read_text(files, where)):
            ids.astype(tokenizer.dtype, copy=False).tofile(fh)

    _write_atomic(target, write)


def _build_once(target: Path, build) -> None:
    """`build()` makes `target` unless it is there. Processes that want it at the same time
    (the ranks of one run on a machine, or two runs) take turns holding a lock file beside
    it: the first builds, the others wait and then find it made, so a corpus is tokenized
    once, not once per rank. Without `fcntl` (Windows) each builds its own; the rename in
    `_write_atomic` keeps that safe."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        build()
        return
    path = target.parent / f".{target.name}.lock"
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            if not target.exists():
                build()
        finally:  # a process that opens the name after this locks a new file: at worst
            path.unlink(missing_ok=True)  # (a failed build) it builds too, alongside


def _write_atomic(target: Path, write) -> None:
    """`write(binary file)` into a temporary file beside `target`, then rename it there: a
    crash leaves no half-written cache, and processes building it at once do not clash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _key(what, files: list[Path]) -> str:
    """A hash of `what` and each file's path, size and mtime: edit a file, get a new key."""
    h = hashlib.sha256()
    h.update(json.dumps(what).encode("utf-8"))
    for path in files:
        st = path.stat()
        h.update(json.dumps([str(path), st.st_size, st.st_mtime_ns]).encode("utf-8"))
    return h.hexdigest()[:32]


# -- the dataset -----------------------------------------------------------------------


class TokenBlocks(Dataset):
    """Sample i: tokens [i*B, i*B + B) of a span as `tokens`, and the next B tokens (one
    further on) as `targets`, int64 [B] each. Blocks do not overlap, so an epoch is one
    pass over the text, and a sample is a function of its index alone (exact resume).

    The memory map opens on first use and is not pickled: DataLoader workers reopen it."""

    def __init__(self, span: TokenSpan, block_size: int):
        self.span, self.block_size = span, block_size
        self._ids: np.ndarray | None = None

    def __len__(self) -> int:
        return (len(self.span) - 1) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} of {len(self)}")
        start = self.span.start + i * self.block_size
        window = self.ids[start : start + self.block_size + 1].astype(np.int64)  # [B + 1]
        window = torch.from_numpy(window)
        return {"tokens": window[:-1], "targets": window[1:]}  # [B], [B]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch's blocks in one read of the memory map (the DataLoader asks for a
        batch's samples together when a dataset can give them so)."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and not (0 <= idx.min() and idx.max() < len(self)):
            raise IndexError(f"blocks {indices} of {len(self)}")
        starts = self.span.start + idx * self.block_size
        windows = torch.from_numpy(self.ids[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return [{"tokens": w[:-1], "targets": w[1:]} for w in windows]  # [B + 1] each

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.memmap(self.span.file, dtype=self.span.dtype, mode="r")
        return self._ids

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": None}


# -- the source ------------------------------------------------------------------------


@register_dataset("text", required=("path",), args=TEXT_ARGS,
                  doc="text files as one token stream for next-token prediction (byte or BPE "
                      "tokens, cached and memory-mapped)")  # fmt: skip
def _text(args: dict) -> Splits:
    files = find_text_files(args["path"], args["pattern"], "data.path")
    val_files = args["val_path"] and find_text_files(args["val_path"], args["pattern"],
                                                     "data.val_path")  # fmt: skip
    cache = token_cache_dir(args["cache_dir"])
    _check_cache_dir(cache, "data.cache_dir" if args["cache_dir"] else "$YAMLNET_CACHE_DIR")
    tokenizer = load_tokenizer(args, files, cache)
    train = cached_tokens(files, tokenizer, cache, "data.path")
    if val_files:
        val = cached_tokens(val_files, tokenizer, cache, "data.val_path")
    else:
        train, val = _hold_out(train, args["val_fraction"])
    block = args["block_size"]
    _check_sizes(train, val, block, held_out=val is not None and not val_files)
    info = {"vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.description,
            "block_size": block}  # fmt: skip
    val_set = TokenBlocks(val, block) if val is not None else None
    return Splits(TokenBlocks(train, block), val_set, Fields(("tokens",), ("targets",), {}, info))


def _hold_out(span: TokenSpan, fraction: float) -> tuple[TokenSpan, TokenSpan | None]:
    """The stream's last `fraction` as validation: a contiguous tail, so no validation
    block shares text with a training block."""
    if fraction == 0:
        return span, None
    cut = span.stop - int(round(len(span) * fraction))
    file, dtype = span.file, span.dtype
    return TokenSpan(file, dtype, span.start, cut), TokenSpan(file, dtype, cut, span.stop)


def _check_sizes(train: TokenSpan, val: TokenSpan | None, block: int, held_out: bool) -> None:
    """A split needs block_size + 1 tokens for one sample: its targets run one further."""
    n = len(train)
    if n <= block:
        left = " left for training after holding out val_fraction" if held_out else ""
        fix = f"the largest block_size that works is {n - 1}" if n > 1 else "give it more text"
        raise ConfigError(f"block_size {block} needs at least {block + 1} training tokens; the "
                          f"text has {n} tokens{left}", path="data.block_size",
                          hint=fix)  # fmt: skip
    if val is None or len(val) > block:
        return
    if held_out:
        fix = "a smaller block_size, a larger val_fraction, or val_fraction: 0"
        raise ConfigError(f"the held-out tail has {len(val)} tokens; block_size {block} needs at "
                          f"least {block + 1}", path="data.val_fraction", hint=fix)  # fmt: skip
    raise ConfigError(f"the validation text has {len(val)} tokens; block_size {block} needs at "
                      f"least {block + 1}", path="data.val_path",
                      hint="a longer validation text or a smaller block_size")  # fmt: skip
