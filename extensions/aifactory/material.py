"""Course material into a participant's home, keeping what they changed.

Run by the session's job, as the participant, before JupyterLab starts:

    python -m aifactory.material SOURCE DEST

Every file of SOURCE goes to the same place under DEST, unless the participant has their own
version there: a file they edited (or made) is never overwritten. A file they left as it was
is updated when the instructor changes it, and one they deleted comes back (as nbgitpuller
does). What was copied is remembered in DEST/.aifactory-material.json (path -> sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MANIFEST = ".aifactory-material.json"
SKIP = {".git", ".ipynb_checkpoints", "__pycache__"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(source: Path):
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(source)


def sync(source: Path, dest: Path) -> dict[str, list[str]]:
    """Copy `source` into `dest`; returns the paths copied, updated and kept (edited)."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    done = {"copied": [], "updated": [], "kept": []}
    for rel in _files(source):
        src, target, key = source / rel, dest / rel, str(rel)
        new = _digest(src)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            done["kept"].append(key)
            continue
        if target.exists():
            mine = _digest(target)
            if mine == new:
                manifest[key] = new
                continue
            if mine != manifest.get(key):  # the participant's own version
                done["kept"].append(key)
                continue
            done["updated"].append(key)
        else:
            done["copied"].append(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.aifactory-partial")
        shutil.copyfile(src, partial)
        os.replace(partial, target)
        manifest[key] = new
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return done


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m aifactory.material SOURCE DEST", file=sys.stderr)
        return 2
    source, dest = Path(argv[0]), Path(argv[1]).expanduser()
    if not source.is_dir():
        print(f"course material: {source} is not a folder; nothing copied", file=sys.stderr)
        return 1
    done = sync(source, dest)
    print(f"course material in {dest}: {len(done['copied'])} new, {len(done['updated'])} "
          f"updated, {len(done['kept'])} of yours kept"
          + (f" ({', '.join(done['kept'][:5])})" if done["kept"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
