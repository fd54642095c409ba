"""yamlnet.runtime — training, checkpoints, data and logs.

One module per noun: `config` (the data:/train: sections), `data` (dataset sources,
transforms, the resumable sampler), `distributed` (rank, world size, device), `optim`
(optimizer, schedule, loss by name), `metrics`, `checkpoint`, `log` (progress,
metrics.csv), `tensorboard` (event files), `train` (the loop), `evaluate` (eval and
predict). The runtime imports the compiler; the compiler never imports the runtime.
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
