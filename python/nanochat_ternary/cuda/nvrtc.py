"""Run-time compilation of the CUDA kernels in ``csrc/`` to PTX through NVRTC (ctypes, no GPU needed).

    from nanochat_ternary.cuda import nvrtc
    if nvrtc.available():
        ptx = nvrtc.compile_ptx("ternary_gemv", arch="sm_90")     # str, PTX text
        nvrtc.version()                                            # (13, 0)

NVRTC ships inside the CUDA-enabled torch wheel (``nvidia/cu13/lib/libnvrtc.so.13`` in site-packages
for torch 2.11+cu130); :func:`library_path` finds it there, next to torch's own libraries, through
``NCT_NVRTC`` (an explicit path), or on the system search path. A CPU-only torch wheel has none:
:func:`available` is False and :func:`compile_ptx` raises :class:`NvrtcUnavailable`.

Kernels are compiled with exact IEEE division/rounding (no ``--use_fast_math``) and without fused
multiply-adds (``--fmad=false``), so their float arithmetic is the arithmetic the CPU references in
:mod:`.ref` do. Results are cached per
(kernel, arch, defines) for the life of the process.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from functools import lru_cache
from pathlib import Path

__all__ = [
    "CSRC",
    "KERNELS",
    "NvrtcError",
    "NvrtcUnavailable",
    "available",
    "library_path",
    "version",
    "kernel_source",
    "compile_ptx",
]

CSRC = Path(__file__).with_name("csrc")
"""The directory of the kernel sources (one kernel per ``.cu`` file)."""

KERNELS: dict[str, tuple[str, ...]] = {
    "ternary_gemv": ("ternary_gemv",),
    "ternary_gemm": ("ternary_gemm",),
    "act_quant": ("act_quant_f32", "act_quant_bf16"),
    "absmean_partial": ("absmean_partial_f32", "absmean_partial_bf16"),
    "ternarize_pack": ("ternarize_pack_f32", "ternarize_pack_bf16"),
}
"""Kernel file stem -> the ``extern "C"`` entry points it defines."""


class NvrtcUnavailable(RuntimeError):
    """No NVRTC library could be loaded (e.g. a CPU-only torch wheel)."""


class NvrtcError(RuntimeError):
    """A kernel failed to compile; the message holds NVRTC's log."""


def _candidates() -> list[str]:
    env = os.environ.get("NCT_NVRTC")
    if env:
        return [env]
    found: list[str] = []
    roots = []
    try:
        import torch

        roots.append(Path(torch.__file__).resolve().parent.parent)  # site-packages
        roots.append(Path(torch.__file__).resolve().parent / "lib")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    roots.extend(Path(p) for p in sys.path if p and os.path.isdir(p))
    for root in roots:
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*", "libnvrtc.so*"):
            found.extend(sorted(glob.glob(os.fspath(root / pattern)), reverse=True))
    found = [f for f in found if "builtins" not in f and ".alt." not in f]
    found += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    return list(dict.fromkeys(found))


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib._nct_path = path  # type: ignore[attr-defined]
        return lib
    raise NvrtcUnavailable(
        "NVRTC (libnvrtc) was not found: install the CUDA-enabled torch wheel (it ships nvidia-cuda-nvrtc) "
        "or set NCT_NVRTC=/path/to/libnvrtc.so; tried " + "; ".join(errors[-3:])
    )


def available() -> bool:
    """Whether an NVRTC library can be loaded."""
    try:
        _lib()
    except NvrtcUnavailable:
        return False
    return True


def library_path() -> str:
    """The path of the NVRTC library in use."""
    return str(_lib()._nct_path)  # type: ignore[attr-defined]


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def kernel_source(name: str) -> str:
    """The CUDA C++ source of kernel file ``name`` (a key of :data:`KERNELS`)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {', '.join(sorted(KERNELS))}")
    return (CSRC / f"{name}.cu").read_text(encoding="utf-8")


def compile_ptx(name: str, arch: str = "sm_90", defines: dict[str, int] | None = None) -> str:
    """Compiles kernel file ``name`` for ``arch`` (``"sm_80"``, ``"sm_90"``, ...) and returns its PTX.

    ``defines`` become ``-D`` options (e.g. ``{"GEMV_ROWS": 4}``). Raises NvrtcError with the
    compiler log when the source does not compile, ValueError on a bad name or arch.
    """
    if not (isinstance(arch, str) and arch.startswith(("sm_", "compute_")) and arch.split("_", 1)[1].rstrip("a").isdigit()):
        raise ValueError(f"arch must look like 'sm_90' or 'compute_90', got {arch!r}")
    items = tuple(sorted((defines or {}).items()))
    for key, value in items:
        if not key.isidentifier() or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"defines must map identifiers to ints, got {key!r}: {value!r}")
    return _compile(name, arch.replace("sm_", "compute_", 1), items)


@lru_cache(maxsize=None)
def _compile(name: str, arch: str, defines: tuple[tuple[str, int], ...]) -> str:
    source = kernel_source(name).encode()
    lib = _lib()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source, f"{name}.cu".encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        # --fmad=false: no a*b+c contraction, so float results equal the CPU references bit for bit.
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device", b"--fmad=false"]
        options += [f"-D{k}={v}".encode() for k, v in defines]
        array = (ctypes.c_char_p * len(options))(*options)
        result = lib.nvrtcCompileProgram(prog, len(options), array)
        if result != 0:
            raise NvrtcError(f"{name}.cu does not compile for {arch}: {_error(result)}\n{_log(lib, prog)}")
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        return buf.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _log(lib: ctypes.CDLL, prog: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) != 0:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def _error(code: int) -> str:
    return _lib().nvrtcGetErrorString(code).decode()


def _check(code: int, what: str) -> None:
    if code != 0:
        raise NvrtcError(f"{what} failed: {_error(code)}")
