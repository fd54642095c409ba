"""`yamlnet train SPEC --nproc N`: N local workers started by PyTorch's elastic launcher
(the engine of `torchrun`), each running `python -m yamlnet train SPEC ...`.

This process is the launcher's agent. Before starting anything it compiles the spec and
checks the run configuration, so a mistake is one line and exit code 2 here, not N
copies of it; it fixes the run folder, so workers restarted after a failure
(`--max-restarts`) resume the same run from its last checkpoint. Rendezvous is on
localhost at a free port. A worker that fails ends the job with a line naming its rank
(or, with restarts left, the workers are started again); a SIGTERM to this process
reaches the workers, which save one checkpoint and stop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from dataclasses import fields

from .errors import ConfigError

__all__ = ["launch", "launched", "check_not_launched"]


def launch(worker_args: list[str], nproc: int, max_restarts: int) -> int:
    """Run `python -m yamlnet train *worker_args` on `nproc` local processes; the exit
    code of the job (0, the failed worker's code, or 128 + a signal that stopped it)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # we say what happened ourselves
    threads = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # N workers share the cores
    options = dict(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"yamlnet-{uuid.uuid4().hex[:12]}",
                   rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                   monitor_interval=0.1, start_method="spawn", shutdown_timeout=60)  # fmt: skip
    known = {f.name for f in fields(LaunchConfig)}  # older torch lacks some options
    config = LaunchConfig(**{k: v for k, v in options.items() if k in known})
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "yamlnet", "train", *worker_args)
    except ChildFailedError as err:
        return _report(err, max_restarts)
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0


def _report(err, max_restarts: int) -> int:
    """One line for the job's failure (the workers printed their own errors): the rank
    killed by a signal first (the others' errors follow from it; the launcher's own
    SIGTERM to the workers it stops comes last), then any other failed rank."""
    failures = sorted(err.failures.items(), key=lambda kv: (
        kv[1].exitcode == -signal.SIGTERM, kv[1].exitcode >= 0, kv[1].timestamp, kv[0]))
    rank, failure = failures[0]
    code = failure.exitcode
    if code in (1, 2) or code >= 128:
        return code  # a failed run, a user error or a stop by signal: rank 0 has said which
    parts = [f"rank {r} (pid {f.pid}) " + (f"was killed by {f.signal_name()}" if f.exitcode < 0
             else f"exited with code {f.exitcode}") for r, f in failures]  # fmt: skip
    tried = f" after {max_restarts} restart(s)" if max_restarts else ""
    print(f"error: {'; '.join(parts)}; the job stopped{tried}. The last good checkpoint is kept: "
          "--resume goes on from it", file=sys.stderr, flush=True)  # fmt: skip
    return 128 - code if code < 0 else (code or 1)


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun, --nproc, or by hand with
    WORLD_SIZE > 1): a worker of a distributed job."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def check_not_launched() -> None:
    """--nproc starts workers itself; inside torchrun (or one of our workers) it is wrong."""
    if launched():
        raise ConfigError("--nproc cannot be used inside torchrun or another launcher",
                          hint="drop --nproc: the launcher already started the processes")  # fmt: skip
