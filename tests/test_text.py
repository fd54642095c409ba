"""The `text` source against oracles: byte ids are the UTF-8 bytes, BPE ids are what
`tokenizers` gives for the same text by hand, samples are slices of the oracle stream;
the token cache is reused; every bad input is one located ConfigError."""

from __future__ import annotations

import os
import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml
from yamlnet.compiler.load import load_spec_source
from yamlnet.runtime import text as T
from yamlnet.runtime.config import load_run_config
from yamlnet.runtime.data import DATASETS, build_splits
from yamlnet.runtime.errors import ConfigError

try:
    import tokenizers
except ImportError:  # the `text` extra: byte-level tests run without it
    tokenizers = None
needs_tokenizers = pytest.mark.skipif(tokenizers is None, reason="needs yamlnet[text]")

TEXT = "Hello, wörld! 日本語 text.\nSecond line: tabs\tand 'quotes'.\n" * 20


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("YAMLNET_CACHE_DIR", str(folder))
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the working directory
    return folder


def splits_of(data: dict):
    spec = yaml.safe_dump({"yamlnet": 1, "data": {"dataset": "text", **data}})
    cfg = load_run_config(load_spec_source(spec).main, None, None)
    return build_splits(cfg.data)


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def stream(ds: T.TokenBlocks) -> list[int]:
    """Every token of a dataset's span, read back from its cache file."""
    return ds.ids[ds.span.start : ds.span.stop].tolist()


def bpe_corpus(lines: int = 400, seed: int = 0, messy: bool = True) -> str:
    """Lines of words. Not messy: every line starts and ends with printable ASCII, the
    places where pieces are cut; messy: also runs of blanks around and between lines."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "héllo", "日本", "x=1;", "don't", "42"]
    ends = ["", "  ", "\t", "\n", " \n  "] if messy else [""]
    line = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) + "."  # noqa: E731
    return "\n".join(rng.choice(ends) + line() + rng.choice(ends) for _ in range(lines)) + "\n"


# -- byte tokens and samples -----------------------------------------------------------


def test_byte_samples_are_slices_of_the_utf8_bytes(tmp_path):
    write(tmp_path / "a.txt", TEXT)
    s = splits_of({"path": "a.txt", "block_size": 16, "val_fraction": 0.25})
    oracle = list(TEXT.encode("utf-8"))
    n_val = round(len(oracle) * 0.25)
    assert stream(s.train) + stream(s.val) == oracle
    assert len(stream(s.val)) == n_val  # the contiguous tail
    assert len(s.train) == (len(oracle) - n_val - 1) // 16
    assert len(s.val) == (n_val - 1) // 16
    for ds, base in ((s.train, 0), (s.val, len(oracle) - n_val)):
        for i in (0, 1, len(ds) - 1):
            sample = ds[i]
            start = base + i * 16
            assert sample["tokens"].dtype == torch.int64 and sample["tokens"].shape == (16,)
            assert sample["tokens"].tolist() == oracle[start : start + 16]
            assert sample["targets"].tolist() == oracle[start + 1 : start + 17]
    last_target = (len(s.train) - 1) * 16 + 16
    assert last_target < len(oracle) - n_val  # training targets stop before the held-out tail
    assert s.fields.inputs == ("tokens",) and s.fields.targets == ("targets",)
    assert s.fields.info == {"vocab_size": 256, "tokenizer": "byte", "block_size": 16}
    with pytest.raises(IndexError):
        s.train[len(s.train)]


def test_val_fraction_zero_has_no_validation_set(tmp_path):
    write(tmp_path / "a.txt", TEXT)
    s = splits_of({"path": "a.txt", "block_size": 7, "val_fraction": 0})
    assert s.val is None
    assert stream(s.train) == list(TEXT.encode())
    assert len(s.train) == (len(TEXT.encode()) - 1) // 7


def test_folder_concatenates_matching_files_in_sorted_order(tmp_path):
    parts = {"b.txt": "bee\n", "a.txt": "ay\n", "sub/c.txt": "sea\n", "a2/z.txt": "zed\n",
             "notes.md": "skipped\n", "sub/skip.log": "skipped\n"}  # fmt: skip
    for name, content in parts.items():
        write(tmp_path / "corpus" / name, content)
    s = splits_of({"path": "corpus", "block_size": 2, "val_fraction": 0})
    assert bytes(stream(s.train)).decode() == "ay\nzed\nbee\nsea\n"  # a.txt, a2/z, b, sub/c
    s = splits_of({"path": str(tmp_path / "corpus"), "pattern": "*.md", "block_size": 2,
                   "val_fraction": 0})  # fmt: skip
    assert bytes(stream(s.train)).decode() == "skipped\n"


def test_a_list_of_paths_and_a_separate_validation_text(tmp_path):
    write(tmp_path / "one.txt", "first\n")
    write(tmp_path / "d" / "two.txt", "second\n")
    write(tmp_path / "val.txt", "validation text\n")
    s = splits_of({"path": ["one.txt", "d"], "val_path": ["val.txt"], "block_size": 4})
    assert bytes(stream(s.train)).decode() == "first\nsecond\n"
    assert bytes(stream(s.val)).decode() == "validation text\n"
    assert s.val[0]["tokens"].tolist() == list(b"vali")


def test_streaming_in_small_pieces_keeps_every_byte(tmp_path, monkeypatch):
    """Pieces cut without line ends must split no multi-byte character."""
    monkeypatch.setattr(T, "PIECE_BYTES", 7)
    content = "日本語のテキスト" * 50 + "é" * 99 + "line\n" * 30 + "x"
    write(tmp_path / "a.txt", content)
    s = splits_of({"path": "a.txt", "block_size": 5, "val_fraction": 0})
    assert stream(s.train) == list(content.encode())


def test_dataset_pickles_without_its_memory_map(tmp_path):
    write(tmp_path / "a.txt", TEXT)
    ds = splits_of({"path": "a.txt", "block_size": 8}).train
    expected = ds[3]["tokens"].tolist()
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._ids is None  # reopened lazily, as a DataLoader worker does
    assert copy[3]["tokens"].tolist() == expected


def test_samples_through_a_dataloader_worker(tmp_path):
    write(tmp_path / "a.txt", TEXT)
    ds = splits_of({"path": "a.txt", "block_size": 8}).train
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (4, 8)
    assert batch["tokens"][1].tolist() == list(TEXT.encode())[8:16]


def test_a_batch_read_at_once_equals_its_samples_read_one_by_one(tmp_path):
    write(tmp_path / "a.txt", TEXT * 3)
    ds = splits_of({"path": "a.txt", "block_size": 8, "val_fraction": 0.5}).val  # a span past 0
    order = [5, 0, len(ds) - 1, 2]
    together = ds.__getitems__(order)
    assert [s["tokens"].tolist() for s in together] == [ds[i]["tokens"].tolist() for i in order]
    assert [s["targets"].tolist() for s in together] == [ds[i]["targets"].tolist() for i in order]
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])


# -- tokenizers ------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_replaces_cut_characters():
    tok = T.TextTokenizer.from_description("byte")
    assert (tok.description, tok.vocab_size) == ("byte", 256)
    assert tok.encode("añ日") == list("añ日".encode())
    assert tok.decode(tok.encode("añ日")) == "añ日"
    assert tok.decode(list("日".encode())[:2]) == "\ufffd"  # a cut character, not an error
    with pytest.raises(ValueError):
        T.TextTokenizer.from_description("not a tokenizer")


@needs_tokenizers
def test_bpe_ids_equal_tokenizers_by_hand(tmp_path):
    corpus = bpe_corpus()
    write(tmp_path / "a.txt", corpus)
    s = splits_of({"path": "a.txt", "tokenizer": "bpe", "vocab_size": 300, "block_size": 8,
                   "val_fraction": 0})  # fmt: skip
    desc = s.fields.info["tokenizer"]
    hand = tokenizers.Tokenizer.from_str(desc)
    oracle = hand.encode(corpus, add_special_tokens=False).ids
    assert stream(s.train) == oracle
    assert len(oracle) < len(corpus.encode())  # merges happened
    assert 256 < s.fields.info["vocab_size"] == hand.get_vocab_size() <= 300
    assert s.train[2]["targets"].tolist() == oracle[17:25]
    tok = T.TextTokenizer.from_description(desc)  # what a checkpoint carries suffices
    assert tok.vocab_size == s.fields.info["vocab_size"]
    assert tok.encode("the cat sat.") == hand.encode("the cat sat.", add_special_tokens=False).ids
    assert tok.decode(oracle) == corpus


@needs_tokenizers
def test_bpe_pieces_cut_at_line_ends_match_encoding_the_whole_text(tmp_path, monkeypatch):
    corpus = bpe_corpus(lines=200, seed=1, messy=False)
    path = write(tmp_path / "a.txt", corpus)
    hf = T.train_bpe([path], 320)
    whole = hf.encode(corpus, add_special_tokens=False).ids
    monkeypatch.setattr(T, "PIECE_BYTES", 64)
    assert len(list(T._pieces(path))) > 20
    tok = T.TextTokenizer(hf)
    assert [int(i) for ids in tok.encode_stream(T.read_text([path], "data.path")) for i in ids] \
        == whole  # fmt: skip


@needs_tokenizers
def test_a_tokenizer_file(tmp_path):
    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, ".": 4}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    corpus = "the cat sat.\nthe dog sat.\n" * 5
    write(tmp_path / "a.txt", corpus)
    s = splits_of({"path": "a.txt", "tokenizer": "tokenizer.json", "block_size": 3,
                   "val_fraction": 0})  # fmt: skip
    assert stream(s.train) == hf.encode(corpus).ids == [1, 2, 3, 4, 1, 0, 3, 4] * 5
    assert s.fields.info["vocab_size"] == 5
    assert s.fields.info["tokenizer"] == hf.to_str()
    assert s.train.ids.dtype.name == "uint16"


@needs_tokenizers
def test_ids_past_65535_are_stored_as_uint32(tmp_path):
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "big.json"))
    write(tmp_path / "a.txt", "w1 w65535 w65536 w69999 nope\n" * 4)
    s = splits_of({"path": "a.txt", "tokenizer": "big.json", "block_size": 4, "val_fraction": 0})
    assert s.train.ids.dtype.name == "uint32" and s.fields.info["vocab_size"] == 70_000
    assert stream(s.train) == [1, 65535, 65536, 69999, 0] * 4
    tok = T.TextTokenizer.from_description(s.fields.info["tokenizer"])
    assert tok.decode(s.train[0]["tokens"]) == "w1 w65535 w65536 w69999"


# -- the cache -------------------------------------------------------------------------


def test_the_cache_is_reused_and_renewed_when_a_file_changes(tmp_path, cache, monkeypatch):
    calls = []
    real = T.write_tokens
    monkeypatch.setattr(T, "write_tokens", lambda *a: calls.append(a) or real(*a))
    path = write(tmp_path / "a.txt", TEXT)
    first = splits_of({"path": "a.txt", "block_size": 8})
    cached = first.train.span.file
    assert os.path.dirname(cached) == str(cache) and len(calls) == 1
    mtime = os.stat(cached).st_mtime_ns
    again = splits_of({"path": "a.txt", "block_size": 8})
    assert len(calls) == 1  # not tokenized again
    assert again.train.span.file == cached and os.stat(cached).st_mtime_ns == mtime
    assert stream(again.train) == stream(first.train)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, touched
    assert splits_of({"path": "a.txt", "block_size": 8}).train.span.file != cached
    path.write_text(TEXT + "more")
    changed = splits_of({"path": "a.txt", "block_size": 8, "val_fraction": 0})
    assert len(calls) == 3
    assert stream(changed.train) == list((TEXT + "more").encode())
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]


def test_processes_wanting_one_cache_at_once_tokenize_it_once(tmp_path, cache, monkeypatch):
    """The ranks of a run start together: one tokenizes while the others wait on the lock
    file, then read what it wrote. (Threads stand in for processes: each opens the lock
    file itself, and flock locks belong to the opened file.)"""
    import threading
    import time

    calls = []
    real = T.write_tokens

    def slow(*args):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)  # long enough for every other thread to reach the lock
        real(*args)

    monkeypatch.setattr(T, "write_tokens", slow)
    write(tmp_path / "a.txt", TEXT)
    got = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, splits_of({"path": "a.txt", "block_size": 8})),
                                name=f"rank{k}") for k in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 3 and len(calls) == 1, calls
    assert len({s.train.span.file for s in got.values()}) == 1
    assert stream(got[0].train) + stream(got[0].val) == list(TEXT.encode())


@needs_tokenizers
def test_a_trained_bpe_tokenizer_is_cached_too(tmp_path, monkeypatch):
    write(tmp_path / "a.txt", bpe_corpus(lines=100))
    data = {"path": "a.txt", "tokenizer": "bpe", "vocab_size": 280, "block_size": 4,
            "cache_dir": str(tmp_path / "elsewhere")}  # fmt: skip
    first = splits_of(data)
    assert os.path.dirname(first.train.span.file) == str(tmp_path / "elsewhere")
    monkeypatch.setattr(T, "train_bpe", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(T, "write_tokens", lambda *a: pytest.fail("tokenized again"))
    assert splits_of(data).fields.info == first.fields.info


def test_cache_dir_defaults():
    os.environ.pop("YAMLNET_CACHE_DIR")
    assert T.token_cache_dir() == Path.home() / ".cache" / "yamlnet" / "tokens"
    os.environ["YAMLNET_CACHE_DIR"] = "/x/y"
    assert T.token_cache_dir() == Path("/x/y")
    assert T.token_cache_dir("/set") == Path("/set")


def test_a_failed_tokenization_leaves_no_cache(tmp_path, cache):
    write(tmp_path / "a.txt", "fine text\n" * 10)
    write(tmp_path / "b.txt", b"text then \xff")
    with pytest.raises(ConfigError):
        splits_of({"path": ["a.txt", "b.txt"]})
    assert os.listdir(cache) == []


# -- errors ----------------------------------------------------------------------------


def error_of(tmp_path, data: dict, files: dict | None = None) -> ConfigError:
    for name, content in (files or {"a.txt": TEXT}).items():
        write(tmp_path / name, content)
    with pytest.raises(ConfigError) as info:
        splits_of(data)
    assert len(str(info.value).splitlines()) == 1
    return info.value


N = len(TEXT.encode())
ERRORS = [
    ({"path": "missing.txt"}, None, "data.path", "no such file or folder: missing.txt"),
    ({"path": ["a.txt", "nope"]}, None, "data.path", "no such file or folder: nope"),
    ({"path": "a.txt", "val_path": "gone"}, None, "data.val_path", "no such file or folder: gone"),
    ({"path": "d"}, {"d/x.md": "text"}, "data.path", "no files matching '*.txt' in the folder d"),
    ({"path": "e.txt"}, {"e.txt": ""}, "data.path", "no text: 0 tokens in "),
    ({"path": "a.txt", "val_path": "e.txt"}, {"a.txt": TEXT, "e.txt": ""}, "data.val_path",
     "no text: 0 tokens in "),
    ({"path": "b.txt"}, {"b.txt": b"abc\x00def"}, "data.path",
     "b.txt is binary: a NUL byte at offset 3"),
    ({"path": "b.txt"}, {"b.txt": "añ".encode() + b"\xc3("}, "data.path",
     "b.txt is not UTF-8 text: byte 0xc3 at offset 3"),
    ({"path": "a.txt", "val_path": "b.txt"}, {"a.txt": TEXT, "b.txt": b"ok\xfe"}, "data.val_path",
     "b.txt is not UTF-8 text: byte 0xfe at offset 2"),
    ({"path": "a.txt", "block_size": N, "val_fraction": 0}, None, "data.block_size",
     f"block_size {N} needs at least {N + 1} training tokens; the text has {N} "
     f"tokens (the largest block_size that works is {N - 1})"),
    ({"path": "a.txt", "block_size": 1000, "val_fraction": 0.5}, None, "data.block_size",
     f"the text has {N - N // 2} tokens left for training after holding out val_fraction "
     f"(the largest block_size that works is {N - N // 2 - 1})"),
    ({"path": "a.txt", "block_size": 100, "val_fraction": 0.01}, None, "data.val_fraction",
     f"the held-out tail has {round(N * 0.01)} tokens; block_size 100 needs at least 101 "
     "(a smaller block_size, a larger val_fraction, or val_fraction: 0)"),
    ({"path": "a.txt", "val_path": "v.txt", "block_size": 9}, {"a.txt": TEXT, "v.txt": "short"},
     "data.val_path", "the validation text has 5 tokens; block_size 9 needs at least 10"),
    pytest.param({"path": "a.txt", "tokenizer": "bpe", "vocab_size": 256}, None, "data.vocab_size",
                 "vocab_size 256 is too small for tokenizer: bpe; it needs at least 257",
                 marks=needs_tokenizers),
    pytest.param({"path": "a.txt", "tokenizer": "tok.json"}, None, "data.tokenizer",
                 "no such tokenizer file: tok.json", marks=needs_tokenizers),
    pytest.param({"path": "a.txt", "tokenizer": "bad.json"},
                 {"a.txt": TEXT, "bad.json": '{"model": 1}'}, "data.tokenizer",
                 "cannot load the tokenizer file bad.json: ", marks=needs_tokenizers),
]  # fmt: skip


@pytest.mark.parametrize("data, files, where, message", ERRORS)
def test_errors(tmp_path, data, files, where, message):
    err = error_of(tmp_path, data, files)
    assert err.path == where
    assert message in str(err)


def test_a_binary_file_names_the_offset_past_the_first_piece(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "PIECE_BYTES", 16)
    content = "line of text\n" * 20
    err = error_of(tmp_path, {"path": "b.txt"}, {"b.txt": content.encode() + b"\x00"})
    assert f"a NUL byte at offset {len(content)}" in str(err)


@pytest.mark.parametrize("tokenizer", ["bpe", "tok.json"])
def test_tokenizers_is_an_optional_package(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers raises ImportError
    err = error_of(tmp_path, {"path": "a.txt", "tokenizer": tokenizer})
    assert err.path == "data.tokenizer"
    assert "needs the tokenizers package (pip install 'yamlnet[text]')" in str(err)


def test_the_schema_checks_the_arguments(tmp_path):
    err = error_of(tmp_path, {"path": "a.txt", "block_size": 0})
    assert err.path == "data.block_size"
    args = DATASETS["text"].args
    assert set(args) == {"path", "pattern", "val_path", "val_fraction", "block_size",
                         "tokenizer", "vocab_size", "cache_dir"}  # fmt: skip
    assert all("default" in s and s["description"] for k, s in args.items() if k != "path")
