"""Pin a packaged model directory in the zoo registry (optionally as the default).

    python examples/register.py python/nanochat_ternary/models/rust-coder --default \
        --description "7.2M-parameter ternary Rust-code model (see its README.md)"

The model's zoo name is the directory's name. Writes every file's sha256 into
nanochat_ternary/models/registry.json (atomically); `TernaryModel.from_pretrained(name)` then loads it
and verifies each hash (`from_pretrained()` with no name: the default).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nanochat_ternary import zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path)
    p.add_argument("--description", required=True)
    p.add_argument("--default", action="store_true", help="make it the zoo default")
    args = p.parse_args()
    directory: Path = args.directory
    registry_path = zoo.PACKAGE_MODELS / "registry.json"
    if directory.resolve().parent != zoo.PACKAGE_MODELS.resolve():
        raise SystemExit(f"{directory} is not a directory inside {zoo.PACKAGE_MODELS}")
    files = {p.name: zoo.sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if "model.gguf" not in files:
        raise SystemExit(f"{directory} holds no model.gguf")
    registry = json.loads(registry_path.read_text())
    registry["models"][directory.name] = {"package": directory.name, "files": files, "description": args.description}
    if args.default:
        registry["default"] = directory.name
    tmp = registry_path.with_name(f".registry.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(registry, indent=2) + "\n")
    os.replace(tmp, registry_path)
    print(json.dumps(registry["models"][directory.name], indent=2))


if __name__ == "__main__":
    main()
