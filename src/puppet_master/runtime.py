"""Process-level CPU settings for sampling: torch's thread count, glibc's malloc behaviour, precision.

Sampling on a CPU allocates and frees tensors of tens of megabytes at every layer. With
glibc's default settings each such block is mapped fresh from the operating system and
unmapped when freed, so every use pays page faults and zero-filling by the kernel: for
the default model about 10 % of a UNet forward and 30 % of the VAE decode (measured with
``getrusage`` page-fault counts, figures in benchmarks/README.md). Keeping freed memory
in the process removes that cost at the price of a higher resident size (about +0.6 GiB
for the default model). These are settings of the application (the CLI calls them), not
of the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading

class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM once :func:`interrupt_on_sigterm` is set: like Ctrl-C, it
    unwinds the stack, so ``finally`` blocks remove temporary files before the process exits."""


def interrupt_on_sigterm() -> bool:
    """Turn SIGTERM into a :class:`Terminated` exception in the main thread (the default ends the
    process at once, leaving any temporary file behind).

    Returns:
        ``True`` when installed; ``False`` outside the main thread (signals cannot be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        return False

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    return True


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and never return freed memory to the OS.

    Sets ``M_MMAP_THRESHOLD`` to 1 GiB and ``M_TRIM_THRESHOLD`` to 2 GiB with
    ``mallopt``. Results of any computation are unchanged; only page-fault work goes away.

    Returns:
        ``True`` when applied; ``False`` off Linux/glibc (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def configure_cpu(threads: int | None = None, keep_memory: bool = True) -> None:
    """Set torch's CPU thread count (``None`` keeps torch's default: one per core) and :func:`keep_freed_memory`."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if keep_memory:
        keep_freed_memory()


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), per torch's CPU feature probe.

    On such CPUs the default model samples about 30 % faster in bf16 than in fp32
    (benchmarks/README.md); elsewhere bf16 is emulated and no faster. ``False`` when the
    probe is unavailable in this torch build.
    """
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private probes: absent in other builds
        return False


def auto_dtype(device: str):
    """The precision ``--dtype auto`` picks: bf16 on a CPU with native bf16, else ``None`` (the loader's default:
    fp32 on a CPU, the stored dtype on a GPU)."""
    import torch

    if str(device).startswith("cpu") and native_bf16_cpu():
        return torch.bfloat16
    return None

