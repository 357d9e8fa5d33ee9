"""Print `name==floor` for every dependency pyproject.toml allows, one per line.

The lowest-versions CI stage installs exactly these, so the floors written in pyproject.toml are
the floors that were tested. Every requirement must be `name>=X` (pinned to `name==X`) or
`name==X` (kept); anything else is an error here, not a silently untested range.

    python .ci/lowest_pins.py [--extras test,torch] [--skip torch]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)\s*$")


def lowest_pins(pyproject: Path, extras: list[str], skip: set[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no optional extra {unknown} (have {sorted(optional)})")
    requirements = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    pins = []
    for req in requirements:
        match = _REQ.match(req)
        if not match:
            raise SystemExit(f"{pyproject}: {req!r} is not 'name>=X' or 'name==X'")
        name, _, version = match.groups()
        if name.lower() not in skip:
            pins.append(f"{name}=={version}")
    return pins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", default="test", help="comma list of optional extras to include")
    ap.add_argument("--skip", default="", help="comma list of packages installed separately")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    extras = [e for e in args.extras.split(",") if e]
    skip = {s.lower() for s in args.skip.split(",") if s}
    print("\n".join(lowest_pins(root / "pyproject.toml", extras, skip)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
