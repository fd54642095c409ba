"""`python -m benchmarks.rss ARGS`: `yamlnet ARGS` in this process, then a line with its
peak resident memory. Started by torchrun, each worker of a distributed run says its own
(`peak_rss rank R KIB`, and `peak_cuda rank R KIB` of memory allocated on its GPU): what
rows 18 and 19 compare per process."""

from __future__ import annotations

import os
import resource
import sys

from yamlnet.cli import _main

if __name__ == "__main__":
    code = _main(sys.argv[1:])  # (main() of a distributed worker leaves by os._exit)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rank = os.environ.get("RANK", "0")
    print(f"peak_rss rank {rank} {peak}", flush=True)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"peak_cuda rank {rank} {torch.cuda.max_memory_allocated() // 1024}", flush=True)
    os._exit(code)  # as yamlnet's own workers leave: no teardown racing Gloo's threads
