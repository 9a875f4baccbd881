"""The CUDA target kernel run on the CPU: its exact source, built by the system C++ compiler.

    from pipelines.targets_host import host_compiler, render_targets_host
    if host_compiler():
        maps = render_targets_host(keypoints, masks, skeleton, cfg)   # CPU tensors in, [B, C, H, W] out

What the GPU compiles (pipelines.targets_cuda.kernel_source) is compiled here too, between a
prelude that defines away the CUDA keywords (`__global__`, `__device__`, `__constant__`) and
declares `blockIdx` / `threadIdx` / `blockDim` / `gridDim` as plain variables, and a launcher
that runs every (block, thread) of the grid in two loops. The kernel's arguments travel as
cuLaunchKernel's do, an array of pointers to each argument, so the launcher never restates the
kernel's signature: there is no second copy of the kernel to drift from the first. This is
how CI checks the kernel's arithmetic and indexing against the torch reference with no GPU.

`-ffp-contract=off` is NVRTC's `--fmad=false`: no multiply-add is fused on either side. The
remaining difference from the GPU is `expf` (CUDA's and glibc's are both within 2 ulp).
The launcher's loop is single-threaded: a test tool, a few seconds per batch, not a renderer.
"""
import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipelines.targets_cuda import KERNEL, render_with

CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")

_PRELUDE = r"""
#include <math.h>
#include <stddef.h>
#include <type_traits>
#include <utility>
#define __global__
#define __device__ inline
#define __forceinline__ inline
#define __constant__ static const
struct dim3 { unsigned x, y, z; };
static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;
"""

_LAUNCHER = r"""
template <class... A, size_t... I>
static void call_kernel(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

template <class... A>
static void run_grid(void (*kernel)(A...), unsigned grid, unsigned block, void** args) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            call_kernel(kernel, args, std::index_sequence_for<A...>{});
        }
}

template <class... A>
static int signature(void (*)(A...), int* sizes, int n) {
    int all[] = {(int)sizeof(A)..., 0};
    for (int i = 0; i < n && i < (int)sizeof...(A); ++i) sizes[i] = all[i];
    return (int)sizeof...(A);
}

// args[i] points at the kernel's i-th argument (cuLaunchKernel's kernelParams)
extern "C" void launch(unsigned grid, unsigned block, void** args) { run_grid(%(kernel)s, grid, block, args); }
// the kernel's number of arguments, and the byte size of each in sizes[0 .. n-1]
extern "C" int kernel_signature(int* sizes, int n) { return signature(%(kernel)s, sizes, n); }
"""


def host_compiler() -> str | None:
    """Path of the C++ compiler the shim uses ($CXX, else c++, g++ or clang++), None without one."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def host_source(source: str) -> str:
    """The C++ translation unit for the CPU: prelude, the kernel source unchanged, launcher."""
    return _PRELUDE + source + _LAUNCHER % {"kernel": KERNEL}


@functools.lru_cache(maxsize=None)
def _library(source: str) -> ctypes.CDLL:
    """Compile host_source(source) into a shared library and load it (once per source)."""
    compiler = host_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    with tempfile.TemporaryDirectory(prefix="targets_host_") as tmp:
        lib = Path(tmp) / "render_maps.so"
        proc = subprocess.run([compiler, *CXXFLAGS, "-x", "c++", "-", "-o", str(lib)],
                              input=host_source(source), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} could not build the target kernel for the CPU:\n{proc.stderr}")
        library = ctypes.CDLL(str(lib))  # stays mapped after the file is removed
    library.launch.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
    library.launch.restype = None
    library.kernel_signature.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    library.kernel_signature.restype = ctypes.c_int
    return library


def _ctype(value):
    """The ctypes object holding one kernel argument: a pointer for a tensor, else the scalar."""
    if isinstance(value, torch.Tensor):
        return ctypes.c_void_p(value.data_ptr())
    if isinstance(value, np.int32):
        return ctypes.c_int32(int(value))
    if isinstance(value, np.float32):
        return ctypes.c_float(float(value))
    raise TypeError(f"no kernel argument type for {type(value).__name__}")


def launch_host(source: str, grid: int, block: int, args: list):
    """Run the kernel compiled from `source` on the CPU (the `launch` of targets_cuda.render_with)."""
    library = _library(source)
    values = [_ctype(a) for a in args]
    sizes = (ctypes.c_int * len(values))()
    arity = library.kernel_signature(sizes, len(values))
    expected = [ctypes.sizeof(v) for v in values]
    if arity != len(values) or list(sizes) != expected:  # a wrong argument list would read garbage
        raise TypeError(f"{KERNEL} takes {arity} arguments of sizes {list(sizes)[:arity]}, "
                        f"given {len(values)} of sizes {expected}")
    pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    library.launch(grid, block, pointers)


def render_targets_host(keypoints: torch.Tensor, masks: torch.Tensor, skeleton, cfg) -> torch.Tensor:
    """pipelines.targets.render_targets through the CUDA kernel's source, compiled for the CPU.

    Args and result as render_targets, on CPU tensors: keypoints [B, P, K', 3] input pixels,
    masks [B, 2, H, W], result [B, C, H, W] float32.
    """
    if keypoints.is_cuda or masks.is_cuda:
        raise ValueError("render_targets_host runs on CPU tensors")
    return render_with(launch_host, keypoints, masks, skeleton, cfg)
