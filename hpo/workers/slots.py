"""Trial slots: how many trials a worker runs at once, on which GPU, with which environment.

A worker without GPUs has one slot (one trial at a time, as it always had). With
``--gpus 0,1 --trials-per-gpu K`` it has ``2 * K`` slots; each slot owns one trial process,
and that process sees only its GPU (``CUDA_VISIBLE_DEVICES``) and takes only its share of the
GPU's memory, set in the environment before Keras imports its backend:

* JAX: no preallocation and ``XLA_PYTHON_CLIENT_MEM_FRACTION`` = 0.9 / K;
* TensorFlow: a hard limit of that share of the card's memory when NVML can tell the card's
  size, else memory growth (:func:`configure_backend`, run in the trial process);
* PyTorch: ``torch.cuda.set_per_process_memory_fraction`` with the same share.

Slots of JAX trials share a persistent XLA compile cache on disk (``JAX_COMPILATION_CACHE_DIR``,
every compiled program kept), so a trial process compiling a model shape that any slot or
worker on the machine compiled before loads it instead of compiling it again.

This module imports nothing heavy: the worker plans slots without importing Keras.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from hpo.errors import UsageError

log = logging.getLogger("hpo.worker")

BACKENDS = ("tensorflow", "jax", "torch")
MEMORY_SHARE = 0.9  # of each GPU, split between its slots; the rest is headroom
MEMORY_FRACTION_ENV = "HPO_GPU_MEMORY_FRACTION"  # read by configure_backend
DEFAULT_COMPILE_CACHE = Path.home() / ".cache" / "hpo" / "jax"


class SlotError(UsageError, ValueError):
    """Bad slot options (GPU list, trials per GPU, backend); the message says which."""


@dataclass(frozen=True)
class SlotPlan:
    """One slot: its index, GPU (None: no GPU pinning), CPU threads and trial-process env."""

    index: int
    gpu: str | None
    threads: int | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"slot {self.index}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1"`` -> ``["0", "1"]``; None or empty -> None (no GPU pinning).

    Raises:
        SlotError: an entry is not a non-negative integer (or a GPU UUID), or is repeated.
    """
    if text is None or not text.strip():
        return None
    gpus = [g.strip() for g in text.split(",")]
    for g in gpus:
        if not (g.isdigit() or g.startswith(("GPU-", "MIG-"))):
            raise SlotError(
                f"--gpus: {g!r} is not a GPU index (use a comma-separated list such as 0,1)"
            )
    dupes = sorted({g for g in gpus if gpus.count(g) > 1})
    if dupes:
        raise SlotError(f"--gpus: GPU {', '.join(dupes)} is listed more than once")
    return gpus


def resolve_backend(backend: str | None) -> str:
    """The Keras backend for trial processes: ``backend``, else $KERAS_BACKEND, else tensorflow.

    Raises:
        SlotError: the name is not a Keras backend, or its package is not installed.
    """
    name = (backend or os.environ.get("KERAS_BACKEND") or "tensorflow").strip().lower()
    if name not in BACKENDS:
        raise SlotError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(name) is None:
        raise SlotError(f"backend {name!r} is not installed in this environment")
    return name


def plan_slots(
    gpus: list[str] | None,
    trials_per_gpu: int = 1,
    *,
    backend: str | None = None,
    threads: int | None = None,
    compile_cache: str | Path | None = None,
    cpu_count: int | None = None,
) -> list[SlotPlan]:
    """The slots of a worker (see the module docstring).

    Args:
        gpus: GPU indices to pin slots to; None: one slot, no pinning (``trials_per_gpu``
            must then be 1).
        trials_per_gpu: concurrent trials per GPU (K).
        backend: ``KERAS_BACKEND`` for the trial processes; None leaves the environment's.
        threads: CPU threads per trial; None: all cores for one slot, else cores / slots.
        compile_cache: JAX compile cache directory for GPU slots (default
            ``~/.cache/hpo/jax``); ``""`` turns the cache off.
        cpu_count: cores to share (default: this machine's).

    Raises:
        SlotError: ``trials_per_gpu`` < 1, or > 1 without GPUs.
    """
    if trials_per_gpu < 1:
        raise SlotError(f"--trials-per-gpu must be at least 1, not {trials_per_gpu}")
    if gpus is None and trials_per_gpu > 1:
        raise SlotError("--trials-per-gpu needs --gpus (the GPUs to run the trials on)")
    devices: list[str | None] = (
        [None] if gpus is None else [g for g in gpus for _ in range(trials_per_gpu)]
    )
    n = len(devices)
    if threads is None and n > 1:
        threads = max(1, (cpu_count or os.cpu_count() or 1) // n)
    common: dict[str, str] = {}
    if backend:
        common["KERAS_BACKEND"] = backend
    if gpus is not None:
        fraction = f"{MEMORY_SHARE / trials_per_gpu:.3f}"
        common.update(
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
            XLA_PYTHON_CLIENT_MEM_FRACTION=fraction,
            **{MEMORY_FRACTION_ENV: fraction},
        )
        cache = DEFAULT_COMPILE_CACHE if compile_cache is None else compile_cache
        if str(cache):
            common.update(
                JAX_COMPILATION_CACHE_DIR=str(Path(cache).expanduser()),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
            )
    plans = []
    for i, gpu in enumerate(devices):
        env = dict(common)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        plans.append(SlotPlan(i, gpu, threads, env))
    return plans


def configure_backend() -> None:
    """Set the backend's GPU memory share in a trial process, before any Keras operation.

    JAX reads its share from the environment by itself. TensorFlow and PyTorch need a call;
    this makes it when the slot set ``HPO_GPU_MEMORY_FRACTION`` (a GPU slot) and does
    nothing otherwise, so a CPU trial process never imports a backend here.
    """
    fraction_text = os.environ.get(MEMORY_FRACTION_ENV)
    if not fraction_text:
        return
    fraction = float(fraction_text)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if backend == "jax" and cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    elif backend == "tensorflow":
        _configure_tensorflow(fraction)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(fraction)


def _configure_tensorflow(fraction: float) -> None:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        total_mb = _gpu_memory_mb()
        try:
            if total_mb:
                limit = int(total_mb * fraction)
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)]
                )
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # already initialized: keep growth
            log.warning("could not limit GPU memory of %s: %s", gpu.name, exc)


def _gpu_memory_mb() -> int | None:
    """The memory of this slot's GPU in MiB, from NVML when it is installed (else None)."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()  # NVML numbers GPUs physically: CUDA_VISIBLE_DEVICES does not apply
        if gpu.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(gpu))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20)
    except Exception:
        return None
