"""The training device: which one, what it supports, its random state, how data gets to it, and the seeds every
random stream of a run takes."""
import ctypes
import os
import random
import shutil
import zlib

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must be present (ValueError says why not)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def check_amp(device: torch.device) -> None:
    """--amp autocasts to bfloat16: refuse (ValueError) a GPU that cannot compute in it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"--amp: the GPU {device} has no bfloat16 support; run without --amp")
    if device.type == "mps":
        try:
            torch.ones(1, device=device, dtype=torch.bfloat16)
        except (RuntimeError, TypeError):
            raise ValueError("--amp: this MPS device has no bfloat16 support (macOS 14 or newer has it); run without "
                             "--amp") from None


def computes_in_bfloat16(device: torch.device) -> bool:
    """Whether the device has bfloat16 arithmetic of its own: a CPU with AVX-512 BF16 or AMX instructions (without
    them autocast emulates it, slower than fp32), a GPU with bfloat16 support. MPS is not measured: no."""
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def resolve_amp(asked: bool | None, version_gains: bool, device: torch.device) -> bool:
    """--amp or --no-amp as given; otherwise on for a version measured to gain from it, where the device computes
    in bfloat16 (fp32 elsewhere, never an error)."""
    if asked is not None:
        return asked
    return version_gains and computes_in_bfloat16(device)


NO_COMPILER = "--compile: no C++ compiler here (torch.compile needs one on the CPU); training uncompiled"


def can_compile(device: torch.device) -> bool:
    """torch.compile's CPU code is C++ that inductor builds with the machine's compiler."""
    return device.type != "cpu" or any(shutil.which(name) for name in (os.environ.get("CXX", "c++"), "g++", "clang++"))


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed for one random stream of a run, from the run's seed and the stream's keys (a name, a rank):
    streams of neighbouring seeds or ranks never coincide, as seed + rank would make them."""
    words = [seed & 0xFFFFFFFF, seed >> 32] + [zlib.crc32(str(key).encode()) for key in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def seed_process(seed: int, rank: int) -> None:
    """Seed torch (dropout, initialisation), numpy and Python. Rank 0 takes the run's seed itself, so a single
    process trains as it always has; other ranks take streams derived from (seed, rank)."""
    own = seed if rank == 0 else derive_seed(seed, "process", rank)
    random.seed(own)
    np.random.seed(derive_seed(own, "numpy") & 0xFFFFFFFF)
    torch.manual_seed(own)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
KEEP_FREED = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
kept_by = None  # the C library, while this process keeps freed memory


def runs_on_glibc() -> bool:
    try:
        return "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (ValueError, OSError, AttributeError):  # another C library, or no confstr at all (Windows)
        return False


def set_malloc_options(libc: ctypes.CDLL, options: dict) -> None:
    for parameter, value in options.items():
        libc.mallopt(parameter, value)


def keep_freed_memory(device: torch.device) -> None:
    """Decide, as a run starts training, whether the process keeps freed memory: only a CPU run does. glibc maps
    every block over 32 MB fresh from the kernel and unmaps it when freed, so each CPU training step of a large batch
    faults its activations in again page by page (a quarter of a version-13 step on a 2-core CPU); kept, a run's
    steady steps reuse the same pages. A GPU run's activations are on the GPU: its process keeps glibc's own
    settings, restored when a CPU run before it in the same process changed them. A later CPU run first gives back
    what the run before it left. Numbers are untouched. Nothing changes without glibc (macOS, Windows, musl)."""
    global kept_by
    if device.type != "cpu":
        stop_keeping_freed_memory()
    elif kept_by is not None:
        give_back_freed_memory()
    elif runs_on_glibc():
        kept_by = ctypes.CDLL(None)
        set_malloc_options(kept_by, KEEP_FREED)


def give_back_freed_memory() -> None:
    """Return every free page of the heap to the kernel (glibc's malloc_trim), where a run's memory needs change: after
    an epoch's test, and before the next run of the process. Kept freed memory holds every hole for the process's
    life otherwise, and holes left by blocks of different sizes add up run after run. The next steps fault their
    pages in once, then reuse them again."""
    if kept_by is not None:
        kept_by.malloc_trim(0)


def stop_keeping_freed_memory() -> None:
    """glibc's own settings back, with the held memory returned: for a GPU run after a CPU one, and in a DataLoader
    worker, which a fork made with its parent's settings and which only decodes images."""
    global kept_by
    if kept_by is not None:
        set_malloc_options(kept_by, GLIBC_DEFAULTS)
        kept_by.malloc_trim(0)
        kept_by = None


def prepare_torch(device: torch.device, threads: int | None, deterministic: bool) -> None:
    """The process's settings for a run that trains on `device`."""
    keep_freed_memory(device)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def device_rng_state(device: torch.device) -> dict | None:
    """The training device's own generator state (CUDA or MPS), with its kind; the CPU's is saved with torch's."""
    if device.type == "cuda":
        return {"type": "cuda", "state": torch.cuda.get_rng_state(device)}
    if device.type == "mps":
        return {"type": "mps", "state": torch.mps.get_rng_state()}
    return None


def restore_device_rng(device: torch.device, saved: dict | None) -> None:
    """Restore onto the device the run trains on now, whatever its index was when the state was saved; a state
    of another kind of device is left aside (that generator starts fresh)."""
    if saved is None or saved["type"] != device.type:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(saved["state"], device)
    else:
        torch.mps.set_rng_state(saved["state"])


def copies_asynchronously(tensor, device: torch.device) -> bool:
    """A non-blocking copy is safe only from pinned memory to CUDA; from pageable memory, or to MPS, it can
    hand the model bytes that are not there yet."""
    return device.type == "cuda" and tensor.is_pinned()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=copies_asynchronously(tensor, device))
