"""Dense (no sparsity) bf16 tensor-core peaks of NVIDIA GPUs, the MFU denominator on CUDA.

    from nanochat_ternary.cuda import peaks
    peaks.dense_bf16_peak("NVIDIA H100 80GB HBM3")    # (989e12, "H100 SXM")
    peaks.dense_bf16_peak("Tesla T4")                 # None: not in the table

Values are the vendors' datasheet numbers for dense BF16 (half the "with sparsity" figure).
Names are matched on ``torch.cuda.get_device_name()``; the first matching row wins, so the more
specific patterns come first.
"""

from __future__ import annotations

__all__ = ["PEAKS", "dense_bf16_peak"]

PEAKS: list[tuple[tuple[str, ...], str, float]] = [
    # (substrings that must all occur in the lower-cased device name, label, FLOP/s)
    (("gh200",), "GH200", 989e12),
    (("h200",), "H200 SXM", 989e12),
    (("h100", "pcie"), "H100 PCIe", 756e12),
    (("h100", "nvl"), "H100 NVL", 835e12),
    (("h100",), "H100 SXM", 989e12),
    (("h800",), "H800 SXM", 989e12),
    (("b200",), "B200", 2250e12),
    (("b100",), "B100", 1750e12),
    (("a100",), "A100", 312e12),
    (("a800",), "A800", 312e12),
    (("l40s",), "L40S", 362e12),
    (("l40",), "L40", 181e12),
    (("a10",), "A10", 125e12),
    (("l4",), "L4", 121e12),
    (("rtx 4090",), "RTX 4090", 165e12),
    (("rtx 3090",), "RTX 3090", 71e12),
]


def dense_bf16_peak(device_name: str) -> tuple[float, str] | None:
    """``(FLOP/s, label)`` for a CUDA device name, or None when the table has no row for it."""
    name = device_name.lower()
    for keys, label, flops in PEAKS:
        if all(k in name for k in keys):
            return flops, label
    return None
