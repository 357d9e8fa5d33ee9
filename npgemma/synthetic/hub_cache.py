"""A Hugging Face cache written by hand, in the layout huggingface_hub's downloads leave:

    <cache>/models--<org>--<name>/
        blobs/<sha256>                      the file contents, named by hash
        refs/<ref>                          the commit a branch/tag points at (no newline)
        snapshots/<commit>/<file>           symlinks ../../blobs/<sha256>
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def repo_folder(cache: str | os.PathLike, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def cache_snapshot(cache: str | os.PathLike, repo_id: str, source: str | os.PathLike, *,
                   commit: str | None = None, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of folder `source` into `cache` as snapshot `commit` of `repo_id`, with
    each ref in `refs` pointing at it. Returns the snapshot folder."""
    source = Path(source)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if commit is None:  # any 40-hex id; derived from the content so reruns agree
        h = hashlib.sha1(repo_id.encode())
        for p in files:
            h.update(p.read_bytes())
        commit = h.hexdigest()
    repo = repo_folder(cache, repo_id)
    snapshot = repo / "snapshots" / commit
    for p in files:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
