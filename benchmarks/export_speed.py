"""Export time per format for a spec, and inference time of onnxruntime against eager
PyTorch on the same inputs, at batch 1 and 32 (CPU).

    python benchmarks/export_speed.py                     # specs/resnet18.yaml
    python benchmarks/export_speed.py --repeat 30

Export times are one export each (no verification). Inference: both runtimes in this
one process, interleaved, after a warm-up, medians of `--repeat` calls. Timings on
shared machines are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "resnet18.yaml"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import numpy as np
    import onnxruntime as ort
    import torch
    from yamlnet.runtime.export import export

    with tempfile.TemporaryDirectory() as tmp:
        print("| format | export time (s) |\n|---|---|")
        for fmt in ("onnx", "torchscript", "pt2"):
            r = export(args.spec, format=fmt, out=Path(tmp) / f"m.{fmt}", verify=False)
            print(f"| {fmt} | {r.seconds:.2f} |")
        session = ort.InferenceSession(str(Path(tmp) / "m.onnx"), providers=["CPUExecutionProvider"])
        torch.manual_seed(0)
        import yamlnet

        model = yamlnet.compile(args.spec).eval()
        name = session.get_inputs()[0].name
        print("\n| batch | onnxruntime median (ms) | eager median (ms) | ort / eager |\n|---|---|---|---|")
        for batch in (1, 32):
            shape = [batch, *session.get_inputs()[0].shape[1:]]
            x = np.random.rand(*shape).astype("float32")
            xt = torch.from_numpy(x)
            ort_t, eager_t = [], []
            with torch.no_grad():
                for i in range(args.repeat + 3):
                    t0 = time.perf_counter()
                    session.run(None, {name: x})
                    t1 = time.perf_counter()
                    model(xt)
                    t2 = time.perf_counter()
                    if i >= 3:  # warm-up
                        ort_t.append(t1 - t0)
                        eager_t.append(t2 - t1)
            o, e = statistics.median(ort_t) * 1e3, statistics.median(eager_t) * 1e3
            print(f"| {batch} | {o:.2f} | {e:.2f} | {o / e:.2f} |")


if __name__ == "__main__":
    main()
