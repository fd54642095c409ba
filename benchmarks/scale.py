"""Row 17: activation checkpointing on the zoo's GPT (specs/zoo/gpt.yaml).

17a counts the bytes autograd keeps for backward during one training forward (each
storage once, through torch.autograd.graph.saved_tensors_hooks), with every
`decoder_block` checkpointed / without: the activations checkpointing saves, measured
exactly rather than through the allocator. 17b is what it costs: the time of a training
step (forward, backward) with it / without, the two measured round by round.
"""

from __future__ import annotations

from .common import ROOT, Goal, Row, Side, interleaved

ZOO_GPT = "specs/zoo/gpt.yaml"


def _model(checkpoint: bool, quick: bool):
    import torch
    from yamlnet.compiler.compile import compile_spec

    sizes = {"dim": 64, "layers": 2, "context": 64} if quick else {"dim": 256, "layers": 8, "context": 256}
    torch.manual_seed(0)
    compiled = compile_spec(ROOT / ZOO_GPT, sizes, checkpoint_blocks=("decoder_block",) if checkpoint else ())
    model = compiled.module.train()
    batch = (4, 64) if quick else (8, 256)
    tokens = torch.randint(0, 512, batch, generator=torch.Generator().manual_seed(0))
    return model, tokens, sizes, batch


def kept_for_backward(loss_of) -> int:
    """Bytes of the tensors autograd keeps for backward while `loss_of()` runs (each
    storage once), then its backward."""
    import torch

    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of()
    loss.backward()
    return total


def _saved_bytes(model, tokens) -> int:
    total = kept_for_backward(lambda: model(tokens).float().mean())
    model.zero_grad()
    return total


def checkpointing_rows(quick: bool) -> list[Row]:
    ours, tokens, sizes, batch = _model(True, quick)
    plain, _, _, _ = _model(False, quick)
    work = (f"zoo GPT dim {sizes['dim']}, {sizes['layers']} layers, batch {batch[0]} x {batch[1]} tokens, "
            "every decoder_block checkpointed")  # fmt: skip
    mib = 2**20
    memory = Row("17a", f"activations kept for backward, {work}",
                 Side("checkpoint", (_saved_bytes(ours, tokens) / mib,), "MiB"),
                 Side("plain", (_saved_bytes(plain, tokens) / mib,), "MiB"), Goal("<=", 0.5))  # fmt: skip

    def step(model):
        def run():
            model(tokens).float().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    t = interleaved({"ours": step(ours), "plain": step(plain)}, 1 if quick else 7, warmup=1)
    time = Row("17b", f"training step time (forward and backward), {work}",
               Side("checkpoint", t["ours"], "s"), Side("plain", t["plain"], "s"),
               note="the price of 17a: the checkpointed blocks run forward twice")  # fmt: skip
    return [memory, time]
