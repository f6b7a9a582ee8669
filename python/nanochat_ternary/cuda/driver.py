"""Launching the NVRTC-compiled kernels through the CUDA driver API (ctypes), on torch's stream.

    from nanochat_ternary.cuda import driver
    fn = driver.function("ternary_gemv", "ternary_gemv", device=x.device)
    driver.launch(fn, grid=(blocks, 1, 1), block=(256, 1, 1), args=[w, x, xs, ws, 0, y, rows, words],
                  device=x.device)

Tensors are passed by ``data_ptr()`` (callers check dtype, contiguity and device first, see
:mod:`.ops`); Python ints become ``int`` (32-bit) arguments unless wrapped in :class:`Long`.
Kernels run on ``torch.cuda.current_stream(device)``, so they are ordered with torch's own work on
that stream. The context is the device's primary context, the one torch uses. Modules are compiled
once per (device, kernel file, defines) and kept for the life of the process. A launch error raises
:class:`CudaError` at once; faults inside a kernel surface at the next synchronization (set
``NCT_CUDA_SYNC=1`` to synchronize after every launch and name the kernel that failed).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from . import nvrtc

__all__ = ["CudaError", "Long", "available", "arch_of", "function", "launch"]


class CudaError(RuntimeError):
    """A CUDA driver call failed, or no usable GPU/driver is present."""


@dataclass(frozen=True)
class Long:
    """A 64-bit integer kernel argument (``long`` in the kernel)."""

    value: int


def available() -> bool:
    """Whether kernels can run here: a CUDA GPU visible to torch and NVRTC to compile them."""
    return torch.cuda.is_available() and nvrtc.available()


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise CudaError("the CUDA driver (libcuda.so.1) was not found: this machine has no NVIDIA driver")
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    _check(lib, lib.cuInit(0), "cuInit")
    return lib


def _check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != 0:
        msg = ctypes.c_char_p()
        lib.cuGetErrorString(code, ctypes.byref(msg))
        raise CudaError(f"{what} failed: CUDA error {code} ({(msg.value or b'unknown').decode()})")


def arch_of(device: torch.device | int) -> str:
    """``sm_XY`` of a CUDA device (e.g. ``sm_90`` for H100/H200)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _index(device: torch.device | int) -> int:
    if isinstance(device, int):
        return device
    if device.type != "cuda":
        raise CudaError(f"kernels run on CUDA devices, got {device}")
    return torch.cuda.current_device() if device.index is None else device.index


@lru_cache(maxsize=None)
def _primary(index: int) -> int:
    """The device's primary context (the one torch's runtime uses), retained once per process."""
    lib = _lib()
    torch.cuda.init()
    with torch.cuda.device(index):
        torch.cuda.current_stream(index)  # makes torch create its context on this device
    dev = ctypes.c_int()
    _check(lib, lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    primary = ctypes.c_void_p()
    _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(primary), dev), "cuDevicePrimaryCtxRetain")
    return int(primary.value or 0)


def _make_current(index: int) -> None:
    """Makes the device's primary context current on this thread (a no-op when it already is)."""
    lib = _lib()
    primary = _primary(index)
    ctx = ctypes.c_void_p()
    _check(lib, lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if (ctx.value or 0) != primary:
        _check(lib, lib.cuCtxSetCurrent(ctypes.c_void_p(primary)), "cuCtxSetCurrent")


@lru_cache(maxsize=None)
def _module(index: int, kernel: str, defines: tuple[tuple[str, int], ...]) -> ctypes.c_void_p:
    lib = _lib()
    ptx = nvrtc.compile_ptx(kernel, arch_of(index), dict(defines))
    _make_current(index)
    module = ctypes.c_void_p()
    _check(lib, lib.cuModuleLoadData(ctypes.byref(module), ptx.encode()), f"cuModuleLoadData({kernel})")
    return module


@lru_cache(maxsize=None)
def _function(index: int, kernel: str, entry: str, defines: tuple[tuple[str, int], ...]) -> ctypes.c_void_p:
    if entry not in nvrtc.KERNELS.get(kernel, ()):
        raise ValueError(f"{kernel}.cu has no entry point {entry!r}")
    module = _module(index, kernel, defines)
    fn = ctypes.c_void_p()
    _check(_lib(), _lib().cuModuleGetFunction(ctypes.byref(fn), module, entry.encode()), f"cuModuleGetFunction({entry})")
    return fn


def function(kernel: str, entry: str, device: torch.device | int, defines: dict[str, int] | None = None) -> ctypes.c_void_p:
    """The compiled entry point ``entry`` of ``csrc/<kernel>.cu`` on ``device``."""
    return _function(_index(device), kernel, entry, tuple(sorted((defines or {}).items())))


def launch(
    fn: ctypes.c_void_p,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[Any],
    device: torch.device | int,
    name: str = "kernel",
) -> None:
    """Launches ``fn`` on torch's current stream of ``device`` with ``args`` (tensors by pointer)."""
    lib = _lib()
    index = _index(device)
    if any(g <= 0 for g in grid) or any(b <= 0 for b in block):
        raise ValueError(f"{name}: empty launch grid {grid} / block {block}")
    holders: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cuda" or a.device.index != index:
                raise CudaError(f"{name}: argument on {a.device}, kernel on cuda:{index}")
            holders.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, Long):
            holders.append(ctypes.c_longlong(a.value))
        elif isinstance(a, bool) or not isinstance(a, int):
            raise TypeError(f"{name}: kernel arguments are tensors and ints, got {type(a).__name__}")
        else:
            if not -(2**31) <= a < 2**31:
                raise ValueError(f"{name}: {a} does not fit a 32-bit int argument")
            holders.append(ctypes.c_int(a))
    params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    with torch.cuda.device(index):
        _make_current(index)
        stream = ctypes.c_void_p(torch.cuda.current_stream(index).cuda_stream)
        _check(
            lib,
            lib.cuLaunchKernel(fn, *grid, *block, 0, stream, params, None),
            f"cuLaunchKernel({name})",
        )
        if os.environ.get("NCT_CUDA_SYNC") == "1":
            _check(lib, lib.cuStreamSynchronize(stream), f"{name} (synchronized after launch)")
