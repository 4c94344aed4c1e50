#!/usr/bin/env python3
"""The executables in cargo's JSON messages (`--message-format=json`) on stdin, one per line as
`NAME PATH`, for targets of KIND whose name starts with PREFIX. Used by .ci/gpu-bundle to find
the binaries it copies by name, so new or renamed targets need no list.

    cargo build ... --message-format=json | executables.py KIND PREFIX
"""

import json
import sys


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    kind, prefix = argv[1], argv[2]
    found = {}
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target") or {}
        exe = msg.get("executable")
        if msg.get("reason") == "compiler-artifact" and exe and kind in target.get("kind", []):
            name = target.get("name", "")
            if name.startswith(prefix):
                if found.get(name, exe) != exe:
                    print(f"executables.py: two {kind} targets named {name}: {found[name]} and {exe}", file=sys.stderr)
                    return 1
                found[name] = exe
    for name in sorted(found):
        print(name, found[name])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
