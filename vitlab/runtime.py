"""Runtime settings of the process and what the machine can do: the allocator setting that pays on CPUs
(``keep_freed_memory``, applied once when ``vitlab`` starts), precision checks (``trainer_precision``: no
emulated bf16), device names, bf16 support, default loader workers, matmul peaks.

Stands alone (torch only): the CLI, training and ``vitlab bench`` use it; it uses nothing of vitlab.
"""
from __future__ import annotations

import functools
import platform
import time
import warnings

import torch

from vitlab.data.base import default_num_workers  # noqa: F401  (one rule for loader workers)

# Data-sheet dense peaks in TFLOP/s (no sparsity): (bf16 tensor core, tf32 tensor core, fp32 non-tensor).
# Matched against torch.cuda.get_device_name() in order, first hit wins (so "H100 PCIe" before "H100").
# GeForce bf16 figures are with fp32 accumulation, which is what PyTorch uses.
DATASHEET_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100 NVL", (835.0, 418.0, 60.0)),
    ("H100", (989.4, 494.7, 66.9)),  # SXM (device name "NVIDIA H100 80GB HBM3")
    ("H200", (989.4, 494.7, 66.9)),  # same compute as H100 SXM, more memory
    ("A100", (312.0, 156.0, 19.5)),
    ("RTX 4090", (165.2, 82.6, 82.6)),
    ("RTX 3090", (71.0, 35.6, 35.6)),
]


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo on Linux (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_label() -> str:
    """``cpu_name()`` plus what tells two CPUs of one name apart, for recorded timings: a VM may hide the model
    number ("AMD EPYC" has been a Zen 1 and a Zen 5 here, 3x apart in matmul speed), so the x86 family/model and the
    widest vector ISA are added, e.g. ``"AMD EPYC (family 23 model 1, avx2)"``."""
    name, ids = cpu_name(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model") and key.strip() not in ids:
                    ids[key.strip()] = value.strip()
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        return name
    flags = cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    parts = [f"family {ids['cpu family']} model {ids['model']}"] if len(ids) == 2 else []
    parts += [isa] if isa else []
    return f"{name} ({', '.join(parts)})" if parts else name


def cpu_flags() -> set[str]:
    """ISA flags from /proc/cpuinfo (x86 ``flags``, arm ``Features``); empty when unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 arithmetic units (x86 AVX512-BF16 or AMX, arm BF16).

    Without them bf16 is emulated and far slower than fp32; with them, bf16 autocast can still be slower than
    fp32 for small models (conversions dominate), so measure before switching.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name)]
    if found:
        return any(found)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast(size: int = 512, repeats: int = 5) -> bool:
    """True when a bf16 matmul on this CPU is at least as fast as fp32 (measured once, ~0.1 s).

    CPUs can report bf16 units (AVX512-BF16, AMX) that a virtual machine does not expose or that torch does not
    use; then bf16 runs emulated, several times slower than fp32. Timing says what flags cannot.
    """
    if not cpu_has_bf16():
        return False
    a32 = torch.randn(size, size)
    a16 = a32.bfloat16()
    times = {}
    for name, a in (("fp32", a32), ("bf16", a16)):
        a @ a  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            a @ a
        times[name] = time.perf_counter() - t
    return times["bf16"] <= times["fp32"]


def cuda_has_bf16() -> bool:
    """True when a CUDA device is available and does bf16 natively (Ampere or newer), not emulated."""
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no including_emulation argument
        return torch.cuda.is_bf16_supported()


def default_precision() -> str:
    """Lightning precision for this machine: 'bf16-mixed' on a CUDA GPU with bf16, else '32-true'."""
    return "bf16-mixed" if cuda_has_bf16() else "32-true"


def resolve_precision(requested: str, device: str) -> tuple[str, str | None]:
    """'fp32' or 'bf16' to run with, and a warning when the request could not be honoured.

    Args:
        requested: 'auto' (bf16 on a CUDA GPU that has it, else fp32), 'fp32' or 'bf16'.
        device: 'cpu' or 'cuda'.
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {requested!r}; choose one of ['auto', 'fp32', 'bf16']")
    if requested == "fp32":
        return "fp32", None
    if device == "cuda":
        if cuda_has_bf16():
            return "bf16", None
        note = None if requested == "auto" else (
            f"precision bf16 asked, but {torch.cuda.get_device_name()} has no native bf16: using fp32")
        return "fp32", note
    if requested == "auto":
        return "fp32", None
    if not cpu_has_bf16():
        return "fp32", f"precision bf16 asked, but this CPU ({cpu_name()}) has no bf16 units: using fp32"
    if not cpu_bf16_is_fast():
        return "fp32", (f"precision bf16 asked, but bf16 matmuls on this CPU ({cpu_name()}) are slower than fp32 "
                        f"(emulated): using fp32")
    return "bf16", None


def trainer_precision(precision: str | int | None, accelerator: str | None) -> tuple[str | int | None, str | None]:
    """A Lightning ``precision`` to train with, and a warning when a bf16 request cannot run well here.

    bf16 (``bf16-mixed``, ``bf16-true``, ``bf16``) on a CPU without bf16 units, or whose bf16 matmuls measure
    slower than fp32 (emulated), becomes ``32-true``; anything else is kept as asked.

    Args:
        precision: The trainer's ``precision`` setting.
        accelerator: The trainer's ``accelerator`` (``auto`` runs on the CPU when no CUDA device is visible).
    """
    if precision is None or not str(precision).startswith("bf16"):
        return precision, None
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if not on_cpu:
        return precision, None
    resolved, note = resolve_precision("bf16", "cpu")
    if resolved == "bf16":
        return precision, None
    why = note.removeprefix("precision bf16 asked, but ").removesuffix(": using fp32")
    return "32-true", f"trainer.precision={precision} asked on the CPU, but {why}: training in fp32 (32-true) instead"


def default_loader_kwargs() -> dict[str, object]:
    """DataLoader keyword arguments for this machine: workers, pin_memory on CUDA, persistent workers."""
    workers = default_num_workers()
    return {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}


def device_name(device: str | torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or the CPU model (with its family and vector ISA: ``cpu_label``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_label()


def datasheet_peak_tflops(name: str, precision: str) -> float | None:
    """Dense data-sheet peak of a known GPU for 'bf16', 'tf32' or 'fp32'; None for unknown devices."""
    column = {"bf16": 0, "tf32": 1, "fp32": 2}[precision]
    for key, peaks in DATASHEET_TFLOPS:
        if key.lower() in name.lower():
            return peaks[column]
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: str | torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                          repeats: int = 5, budget_s: float = 2.0) -> float:
    """Best achieved TFLOP/s of an n x n matmul on ``device``: the practical peak that MFU is measured against.

    Args:
        device: Where to run.
        dtype: torch.float32 or torch.bfloat16.
        n: Matrix side; default 8192 on CUDA, 1024 on CPU.
        repeats: Timed rounds; the best one counts.
        budget_s: Stop early once this much time was spent timing (slow CPUs).
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a @ b  # warm-up: library init, kernel choice
    synchronize(device)
    inner = 10 if device.type == "cuda" else 1
    best, start = 0.0, time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 * inner / dt / 1e12)
        if time.perf_counter() - start > budget_s:
            break
    return best


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2 ** 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step frees and re-allocates the same activation buffers (tens of MB) every step; by default
    glibc returns them to the kernel (``munmap`` / heap trim) and the next step page-faults them back in,
    zeroed: about a million page faults and 8-10 % of the CPU time per 40 steps of the Fashion-MNIST recipe.
    Here blocks up to 32 MB come from the heap and the heap is not trimmed (what ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` or a tcmalloc/jemalloc preload do; PyTorch's CPU tuning guide recommends those).
    The process keeps its peak memory until it exits. Returns False (nothing changed) off glibc, or when
    ``VITLAB_KEEP_FREED_MEMORY=0``; environment variables ``MALLOC_*_`` set by the user are left alone.
    """
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("VITLAB_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False  # the user tuned it already
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 2 ** 20) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)


__all__ = ["cpu_name", "cpu_flags", "cpu_has_bf16", "cuda_has_bf16", "default_precision", "resolve_precision",
           "default_num_workers", "default_loader_kwargs", "device_name", "datasheet_peak_tflops",
           "measure_matmul_tflops", "DATASHEET_TFLOPS",
           "keep_freed_memory"]
