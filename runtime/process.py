"""What a run sets for the whole process while it trains, and puts back afterwards: the
determinism switches, the garbage collector's frozen objects, and the stop signals."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from contextlib import contextmanager

import torch

from .distributed import (
    Env,
    launched_world,
)


@contextmanager
def torch_settings_restored():
    """A run sets torch's global determinism switches; a caller's are put back after."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)  # fmt: skip
    try:
        yield
    finally:
        use_deterministic(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.utils.deterministic.fill_uninitialized_memory = saved[3]


@contextmanager
def setup_objects_frozen():
    """The objects alive when the loop starts (torch's and every imported module's, the
    model, the caller's: hundreds of thousands) moved out of the garbage collector's reach
    while it runs, as `gc.freeze` does. Python's full collections scan every tracked
    object; the loop's own allocations (a checkpoint's above all) set one off now and then,
    and with ~420k objects each took 180 ms, in a digits CNN benchmark whose 180 measured
    steps take 1.4 s. Frozen, a collection scans only what the loop made.
    The price: one collection first (50 ms with torch alone loaded, 180 ms at 420k
    objects), so the setup's garbage is not kept alive; and frozen objects that become
    garbage in a reference cycle during training are freed only after it (without a
    cycle they are freed at once, as ever). Afterwards everything is unfrozen,
    whatever froze it. Skipped when the caller froze objects itself (its arrangement
    stands) or switched the collector off."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def use_deterministic(on: bool, *, warn_only: bool, compiled: bool = False) -> None:
    """`torch.use_deterministic_algorithms`, which also sets TorchInductor's own flag and
    so imports TorchInductor: 1.5 s of a 6 s quick start. A run that does not compile
    (and a process that has not loaded TorchInductor) needs only the flag the eager
    kernels read; TorchInductor, loaded later, starts from its own default."""
    if compiled or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(on, warn_only=warn_only)


def set_determinism(on: bool, env: Env, compiled: bool) -> None:
    """Deterministic kernels, without the NaN fill of every new tensor that PyTorch's switch
    also turns on: the fill guards against kernels that read memory they never wrote,
    cost up to 4% of a digits CNN step on CPU (0-4% across runs), and the exact-resume
    tests (bitwise equal weights) pass without it."""
    if on and env.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
    use_deterministic(on, warn_only=True, compiled=compiled)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not on


class StopSignals:
    """SIGTERM/SIGINT ask the loop to save and stop at the next step boundary; a second
    SIGINT raises KeyboardInterrupt at once (a second SIGTERM terminates). Python lets only
    the main thread set handlers: `train` called from another thread leaves them alone."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        self.quiet = launched_world()[0] != 0  # rank 0 alone says it

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        again = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, again)
        if self.quiet:
            return
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "and stopping" + (" (again to abort now)" if signum == signal.SIGINT else ""),
              flush=True)  # fmt: skip

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
