"""Split the task set for the RL experiment: 6 instances of every train family become unseen
"dev" tasks (split heldout, never trained on by SFT or RL); a family with fewer than 12 instances (the
mined ones: a crate's functions) gives a quarter of them, rounded down. The held-out families go to
their own file.

    python examples/rl/make_dev_split.py python/nanochat_ternary/rl/data/tasks.jsonl OUT_DIR
writes OUT_DIR/exp_tasks.jsonl (train = train families minus dev; heldout = dev), dev.jsonl, heldfam.jsonl.
"""

import json
import random
import sys
from pathlib import Path


def main(tasks: str, out: str) -> None:
    rows = [json.loads(line) for line in Path(tasks).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    by_family: dict[str, list[dict]] = {}
    for r in train:
        by_family.setdefault(r["family"], []).append(r)
    rng = random.Random(0)
    dev = {r["name"] for _, rs in sorted(by_family.items()) for r in rng.sample(rs, 6 if len(rs) >= 12 else len(rs) // 4)}
    exp = [dict(r, split="heldout") if r["name"] in dev else r for r in train]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("exp_tasks", exp), ("dev", [r for r in exp if r["name"] in dev]), ("heldfam", held)):
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    print(f"{len(exp)} experiment tasks ({len(dev)} dev), {len(held)} held-out-family tasks")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
