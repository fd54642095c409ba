"""Sample text from a trained language model: `yamlnet generate SPEC --checkpoint C
--prompt TEXT`.

The prompt is encoded with the tokenizer the run trained with (carried in its
checkpoint), and the model is run autoregressively: each step feeds the last
`block_size` tokens (the length it was trained on), takes the scores of the last position
from the output the run's loss read (its class dim moved last), divides them by the
temperature, keeps the top k, and draws the next token from a generator seeded by `seed`
(the same seed, the same text).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError
from .evaluate import session
from .tasks import as_tuple, loss_items
from .text import TextTokenizer

__all__ = ["generate", "Generation"]


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the continuation alone
    tokens: list[int]  # the continuation's ids


def generate(spec: str | os.PathLike, checkpoint: str | os.PathLike, prompt: str, *,
             max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, config=None, plugins=(), device: str | None = None,
             **overrides: Any) -> Generation:  # fmt: skip
    """Continue `prompt` with up to `max_new_tokens` tokens.

        >>> yamlnet.generate("specs/zoo/gpt.yaml", "runs/gpt", "The spec").text  # doctest: +SKIP
    """
    _check_options(max_new_tokens, temperature, top_k, seed)
    cfg, compiled, model, dev, state = session(spec, checkpoint, config, plugins, overrides, device)
    tokenizer, block = _tokenizer(cfg, state)
    term = loss_items(cfg)[0]
    names = [n for n, _ in compiled.spec.outputs]
    out_index = names.index(term["output"]) if term.get("output") in names else 0
    class_dim = int(term.get("class_dim", -1))
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("the prompt is empty", hint="give --prompt some text")
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.int64, device=dev)  # (1, t)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = as_tuple(model(x[:, -block:]))[out_index]  # (1, t, vocab) for class_dim -1
            scores = logits.movedim(class_dim, -1)[0, -1].float().cpu()  # (vocab,)
            scores = scores[: tokenizer.vocab_size]  # a head wider than the tokenizer: ids it cannot spell
            token = _draw(scores, temperature, top_k, g)
            new.append(token)
            x = torch.cat([x, x.new_tensor([[token]])], dim=1)
    return Generation(prompt, tokenizer.decode(new), new)


MAX_NEW_TOKENS = 100_000  # one call: a model past this is better served by a loop of calls


def _check_options(max_new_tokens: int, temperature: float, top_k: int | None, seed: int = 0) -> None:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(f"--max-new-tokens must be from 1 to {MAX_NEW_TOKENS:,}")
    if not 0 < temperature < float("inf"):
        raise ConfigError("--temperature must be a finite number above 0")
    if top_k is not None and top_k < 1:
        raise ConfigError("--top-k must be at least 1")
    if not -(2**63) <= seed < 2**64:
        raise ConfigError("--seed must fit in 64 bits")


def _draw(scores: torch.Tensor, temperature: float, top_k: int | None, g: torch.Generator) -> int:
    scores = scores / temperature
    if top_k is not None and top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=g))


def _tokenizer(cfg, state: dict) -> tuple[TextTokenizer, int]:
    """The run's tokenizer and block size: from the checkpoint's data info, else from a
    byte-level `text` source in its config."""
    info = state.get("data_info") or {}
    if "tokenizer" in info:
        return TextTokenizer.from_description(info["tokenizer"]), int(info["block_size"])
    data = cfg.data
    if data.get("dataset") == "text" and data.get("tokenizer", "byte") == "byte":
        return TextTokenizer.from_description("byte"), int(data["block_size"])
    raise ConfigError("this run's data is not a text source, so there is no tokenizer to "
                      "generate with", path="data.dataset",
                      hint="train the spec with data.dataset: text")  # fmt: skip
