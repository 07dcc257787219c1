"""Write constraints.txt: the exact versions, in this environment, of what ``pip install -e ".[dev]"`` needs.

Run from the repository root with the venv whose test suite passed:
``.venv/bin/python scripts/constraints.py > constraints.txt``. It walks the
requirements of nin_keras (with its ``dev`` extra) through the installed
distributions' metadata, so packages installed for other reasons are left
out; pip itself is pinned too (setup.sh installs that version). setuptools
and wheel (build tools that tensorflow and astunparse list) are left to pip:
a venv's bundled setuptools can be older than its security fixes.
"""

import importlib.metadata as metadata
import re
import sys

from packaging.requirements import Requirement


def closure(root="nin_keras", extras=("dev",)):
    """Installed distributions (canonical name -> version) that ``root[extras]`` requires, recursively."""
    seen, todo = {}, [(root, tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                continue
            key = re.sub(r"[-_.]+", "-", req.name).lower()
            if key not in seen:
                seen[key] = metadata.version(req.name)
                todo.append((req.name, tuple(req.extras)))
    return seen


UNPINNED = ("setuptools", "wheel")


def main():
    pins = {name: version for name, version in closure().items() if name not in UNPINNED}
    pins["pip"] = metadata.version("pip")
    print("# Versions the test suite passed with (Python %d.%d); regenerate with scripts/constraints.py." % sys.version_info[:2])
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
