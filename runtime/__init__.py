"""yamlnet.runtime — devices, data, training, checkpoints and export.

Empty for now: training, distributed and export land in their own issues. The
runtime may import the compiler; the compiler never imports the runtime.
"""

__all__: list[str] = []
