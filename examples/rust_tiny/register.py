"""Pin a packaged model directory in the zoo registry as the default.

    python examples/rust_tiny/register.py python/nanochat_ternary/models/rust-tiny

Writes every file's sha256 into nanochat_ternary/models/registry.json (atomically);
`TernaryModel.from_pretrained()` then loads it and verifies each hash.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nanochat_ternary import zoo

NAME = "rust-tiny"


def main() -> None:
    directory = Path(sys.argv[1])
    registry_path = zoo.PACKAGE_MODELS / "registry.json"
    if directory.resolve().parent != zoo.PACKAGE_MODELS.resolve():
        raise SystemExit(f"{directory} is not a directory inside {zoo.PACKAGE_MODELS}")
    files = {p.name: zoo.sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}
    registry = json.loads(registry_path.read_text())
    registry["models"][NAME] = {
        "package": directory.name,
        "files": files,
        "description": "4.5M-parameter ternary Rust-code model trained with this package (see its README.md)",
    }
    registry["default"] = NAME
    tmp = registry_path.with_name(f".registry.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(registry, indent=2) + "\n")
    os.replace(tmp, registry_path)
    print(json.dumps(registry["models"][NAME], indent=2))


if __name__ == "__main__":
    main()
