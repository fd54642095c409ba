"""Row 9: export time per format, and onnxruntime against eager PyTorch at batch 1 and 32.

Export times are one export each, without the verification the CLI runs afterwards.
Inference: both runtimes in this process on the same input, interleaved, after warm-up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .common import SPECS, Row, Side, interleaved


def export_rows(quick: bool) -> list[Row]:
    import numpy as np
    import onnxruntime as ort
    import torch

    import yamlnet

    spec = SPECS / ("mlp.yaml" if quick else "resnet18.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, fmt in enumerate(("onnx", "torchscript", "pt2")):
            r = yamlnet.export(spec, format=fmt, out=Path(tmp) / f"m.{fmt}", verify=False)
            rows.append(Row(f"9{'abc'[k]}", f"export time, {spec.name} -> {fmt}",
                            Side(fmt, (r.seconds,), "s")))  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2  # as torch's 2 threads
        session = ort.InferenceSession(str(Path(tmp) / "m.onnx"), options, providers=["CPUExecutionProvider"])
    model = yamlnet.compile(spec).eval()
    first = session.get_inputs()[0]
    for k, batch in enumerate((1, 32)):
        x = np.random.default_rng(0).random((batch, *first.shape[1:]), dtype=np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            t = interleaved({"ort": lambda x=x: session.run(None, {first.name: x}),
                             "eager": lambda xt=xt: model(xt)}, 5 if quick else 20, number=1 if batch > 1 else 5)  # fmt: skip
        rows.append(Row(f"9{'de'[k]}", f"inference, {spec.name}, batch {batch}",
                        Side("onnxruntime", tuple(s * 1e3 for s in t["ort"]), "ms"),
                        Side("eager PyTorch", tuple(s * 1e3 for s in t["eager"]), "ms")))  # fmt: skip
    return rows
