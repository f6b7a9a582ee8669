"""CUDA ternary kernels, compiled at run time by NVRTC and launched through the CUDA driver API.

    from nanochat_ternary import cuda
    cuda.available()                       # a GPU, its driver and NVRTC present
    cuda.nvrtc.compile_ptx("ternary_gemv", "sm_90")   # works without a GPU (NVRTC only)
    w = cuda.ops.ternarize(weight)         # on a CUDA tensor: the kernels; on a CPU tensor: the references
    y = cuda.ops.linear(x, w)

Modules: :mod:`.layout` (the packed weight layout), :mod:`.nvrtc` (compilation), :mod:`.driver`
(launching on torch's stream), :mod:`.ops` (checked torch-level ops), :mod:`.ref` (CPU references),
:mod:`.peaks` (dense bf16 peaks of GPUs, for MFU). Kernel sources: ``csrc/*.cu`` in this package
(``csrc/`` at the repository root links here).
"""

from __future__ import annotations

from . import driver, layout, nvrtc, ops, peaks, ref
from .driver import CudaError, available

__all__ = ["available", "CudaError", "driver", "layout", "nvrtc", "ops", "peaks", "ref"]
