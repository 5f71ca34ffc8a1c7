"""Regenerate converters/tensorrt_onnx_ops.json from onnx-tensorrt's docs/operators.md at release tags.

    git clone https://github.com/onnx/onnx-tensorrt && python scripts/vendor_trt_ops.py onnx-tensorrt

Reads docs/operators.md at each tag in TAGS (git show), keeps the operator rows (Y: supported, N: not;
the names of ops supported only under conditions) and the documented opset range, and names each tag's commit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

TAGS = {"8.5": "release/8.5-GA", "8.6": "release/8.6-GA", "10.0": "release/10.0-GA", "10.1": "release/10.1-GA"}
OUT = Path(__file__).resolve().parents[1] / "converters" / "tensorrt_onnx_ops.json"


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def table(text: str) -> dict:
    m = re.search(r"opset (\d+) to opset (\d+)", text) or re.search(r"up to Opset (\d+)", text)
    supported, unsupported, restrictions = [], [], {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] == "Operator" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", cells[0]):
            continue
        if cells[1].startswith("Y"):
            supported.append(cells[0])
            if len(cells) > 3 and cells[3]:
                restrictions[cells[0]] = True
        elif cells[1].startswith("N"):
            unsupported.append(cells[0])
    return {"opsets": [int(g) for g in m.groups()] if m else None, "supported": sorted(supported),
            "unsupported": sorted(unsupported), "restricted": sorted(restrictions)}


def main(repo: str) -> int:
    out = {"source": "github.com/onnx/onnx-tensorrt docs/operators.md at the release tags below (the newest "
                     "tag in the snapshot read is release/10.1-GA, June 2024), made by "
                     "scripts/vendor_trt_ops.py; Y rows are supported, N rows and unlisted ops are not; "
                     "the operators whose support has conditions are listed by name (the conditions are in that "
                     "file at the named commit).", "tables": {}}
    for version, tag in TAGS.items():
        commit = git(repo, "rev-parse", f"{tag}^{{commit}}").strip()
        out["tables"][version] = dict(table(git(repo, "show", f"{tag}:docs/operators.md")), tag=tag, commit=commit)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
