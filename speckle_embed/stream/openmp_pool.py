"""Release the calling thread's OpenMP worker pool, so that the classifier thread's pool is the only one.

Why the service needs it
------------------------
PyTorch's CPU kernels run on OpenMP (GNU ``libgomp`` in the Linux wheels), and ``libgomp`` keeps
one pool of worker threads *per thread that opened a parallel region*. The service builds the
classifier (support embeddings, possibly an int8 calibration) in the thread that starts it and
classifies in its own classifier thread: two pools. Once its pools hold more threads than the
machine has CPUs, ``libgomp`` "throttles" them: a waiting worker spins 100 times instead of
300,000 before it sleeps on a futex (``GOMP_SPINCOUNT`` in the libgomp manual), so every one of
the embedder's many short parallel regions pays a sleep and a wake-up. On the 2-core target this made the classifier thread ~25 % slower than
the same ``classify`` calls in the thread that owns the only pool (the in-memory benchmark).
Freeing the starting thread's pool (``omp_pause_resource_all``, OpenMP 5.0, which ``libgomp``
implements by ending the calling thread's pool; a later parallel region in that thread
simply builds a new one) leaves the classifier's pool alone, unthrottled.

No library offers this (PyTorch exposes ``set_num_threads`` only), hence the few lines of
``ctypes``. It is a no-op where it does not apply: no ``libgomp`` loaded (macOS, Intel OpenMP
builds), no ``/proc`` (not Linux), or a ``libgomp`` without OpenMP 5.0.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["loaded_libgomps", "release_openmp_pool"]

_OMP_PAUSE_SOFT = 1   # omp_pause_resource_t: omp_pause_soft


def loaded_libgomps() -> list[str]:
    """Paths of every ``libgomp`` mapped into this process, in load order.

    Wheels vendor their own copies (``torch/lib/libgomp.so.1``, ``scikit_learn.libs/libgomp-*.so``),
    each a separate OpenMP runtime with its own pools. Read from ``/proc/self/maps`` so that the
    very libraries loaded are addressed (``find_library("gomp")`` could name yet another copy).
    """
    out: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith("libgomp") and ".so" in path and path not in out:
                    out.append(path)
    except OSError:
        pass
    return out


def release_openmp_pool() -> int:
    """End the OpenMP worker threads of the calling thread's pools (if any), in every loaded ``libgomp``.

    Returns
    -------
    int
        How many ``libgomp`` runtimes released the calling thread's pool (or had none); 0 where
        this does not apply (see the module docstring).
    """
    released = 0
    for path in loaded_libgomps():
        try:
            fn = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        released += fn(_OMP_PAUSE_SOFT) == 0
    return released
