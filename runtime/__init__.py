"""yamlnet.runtime — training, checkpoints, data and logs.

One module per noun: `config` (the data:/train: sections), `data` (samples as named
fields, transforms, the resumable sampler) with the sources in `sources`, `tables`,
`text`, `dense` and `seq2seq`; `tasks` (fields to inputs, loss terms, metrics per
output), `metrics` (torchmetrics by name), `optim` (optimizer, schedule, loss by name),
`distributed` (rank, world size, device), `checkpoint`, `log` (progress, metrics.csv),
`trackers` (TensorBoard, MLflow), `train` (the loop) with `run` (the run's state, folder and
resume), `step` (one optimizer step on 1..N processes) and `process` (process-wide
settings while training); `evaluate`, `predict` and `generate` (serving a checkpoint) and
`export`; `lr_find` (the learning-rate range test) and `plot` (metrics.csv curves).
The runtime imports the compiler; the compiler never imports the runtime.
"""

from functools import cache

__all__ = ["package_version"]


@cache
def package_version() -> str:
    """yamlnet's installed version, for checkpoints and artifacts (read from the package
    metadata, so the runtime need not import the face; read once: it takes a millisecond,
    and every checkpoint asks)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yamlnet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
