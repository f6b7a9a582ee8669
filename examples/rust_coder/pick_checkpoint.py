"""The RL checkpoint that ships: of the run's evaluated checkpoints (its `eval` records on dev tasks of the
train families, never HumanEval), the best by pass@1, then pass@16, then the later step. Prints its path.

    python examples/rust_coder/pick_checkpoint.py runs/rust-coder/post/maxrl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pick(run: Path) -> Path:
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("eval") == "heldout"]
    saved = [(r, run / f"ckpt-{r['step']:08d}.safetensors") for r in evals if r["step"] > 0]
    saved = [(r, path) for r, path in saved if path.is_file()]
    if not saved:
        raise SystemExit(f"{run}: no evaluated checkpoint (run with --eval-every a multiple of --save-every)")
    best, path = max(saved, key=lambda rp: (rp[0]["pass@1"], rp[0].get("pass@16", 0.0), rp[0]["step"]))
    seen = ", ".join(f"{r['step']}: {r['pass@1']:.4f}" for r, _ in saved)
    print(f"chose step {best['step']}: dev pass@1 {best['pass@1']:.4f} (evaluated: {seen})", file=sys.stderr)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(pick(Path(sys.argv[1])))
