"""yamlnet.runtime — training, checkpoints, data and logs.

One module per noun: `config` (the data:/train: sections), `data` (dataset sources,
transforms, the resumable sampler), `distributed` (rank, world size, device), `optim`
(optimizer, schedule, loss by name), `metrics`, `checkpoint`, `log` (progress,
metrics.csv), `tensorboard` (event files), `train` (the loop), `evaluate` (eval and
predict). The runtime imports the compiler; the compiler never imports the runtime.
"""

__all__: list[str] = []
