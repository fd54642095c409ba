"""Run an exported artifact on saved inputs, in a process of its own (export's check).

    python -m yamlnet.runtime.reload FORMAT ARTIFACT IN.npz OUT.npz INPUTS OUTPUTS

IN.npz holds `{batch}/{input}` arrays; OUT.npz gets `{batch}/{output}`. An ONNX artifact
is run by onnxruntime alone: this process then never imports torch, like a deployment.
"""

from __future__ import annotations

import sys

import numpy as np


def _onnx(path: str):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _torch_runner(load):
    def runner(path: str):
        import torch

        module = load(torch, path)

        def run(feeds):
            with torch.no_grad():
                out = module(*[torch.from_numpy(v) for v in feeds.values()])
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

        return run

    return runner


RUNNERS = {
    "onnx": _onnx,
    "torchscript": _torch_runner(lambda torch, p: torch.jit.load(p)),
    "pt2": _torch_runner(lambda torch, p: torch.export.load(p).module()),
}


def main(argv: list[str]) -> int:
    fmt, artifact, inputs, out, names, outputs = argv
    run = RUNNERS[fmt](artifact)
    results = {}
    with np.load(inputs, allow_pickle=False) as data:
        batches = sorted({int(k.split("/")[0]) for k in data.files})
        for b in batches:
            feeds = {n: data[f"{b}/{n}"] for n in names.split(",")}
            for name, value in zip(outputs.split(","), run(feeds), strict=True):
                results[f"{b}/{name}"] = np.asarray(value)
    np.savez(out, **results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
