"""Hugging Face model ids -> checkpoint folders in the local cache, offline.

`google/paligemma2-3b-pt-224` (optionally `@revision`: a branch, tag or commit hash) names the
snapshot folder huggingface_hub keeps in its cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`): `models--google--paligemma2-3b-pt-224/snapshots/<commit>/`, with
`refs/main` holding the commit `main` points at. huggingface_hub (the optional `hub` extra)
does the resolution — `snapshot_download(local_files_only=True)` reads refs and snapshots and
never opens a connection — and `scan_cache_dir` lists what is cached. npgemma never downloads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from . import bundled

# What an id looks like (`org/name`, `@revision` optional); huggingface_hub validates the rest.
# A string that names an existing folder is always the folder.
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
_INSTALL = "pip install 'npgemma[hub]'"


@dataclass(frozen=True)
class CachedCheckpoint:
    """One cached PaliGemma snapshot."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]  # branches / tags pointing at the commit (empty: a detached snapshot)
    path: Path             # the snapshot folder (files are symlinks into ../../blobs)

    @property
    def name(self) -> str:
        """`org/name@main`, or `org/name@<commit prefix>` when no ref points here."""
        return f"{self.repo_id}@{','.join(self.refs) if self.refs else self.commit[:12]}"


def is_model_id(model) -> bool:
    """True for `org/name[@revision]` strings that are not an existing path."""
    return (isinstance(model, str) and _MODEL_ID.fullmatch(model) is not None
            and not os.path.exists(model))


def _split(model_id: str) -> tuple[str, str | None]:
    repo_id, _, revision = model_id.partition("@")
    return repo_id, revision or None


def _hub(purpose: str):
    try:
        import huggingface_hub
    except ImportError:
        raise InputError(f"{purpose} needs huggingface_hub: {_INSTALL}") from None
    return huggingface_hub


def cache_dir() -> str | None:
    """The cache huggingface_hub reads (its HF_HUB_CACHE, from the environment at its import);
    None without huggingface_hub."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants.HF_HUB_CACHE


def _is_paligemma(config_json: Path) -> bool:
    try:
        return json.loads(config_json.read_text(encoding="utf-8")).get("model_type") == "paligemma"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def cached_paligemma() -> list[CachedCheckpoint]:
    """Every cached model snapshot whose config.json says model_type "paligemma", by id."""
    hub = _hub("reading the Hugging Face cache")
    try:
        info = hub.scan_cache_dir(cache_dir())
    except hub.CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: (not r.refs, sorted(r.refs), r.commit_hash)):
            if _is_paligemma(Path(rev.snapshot_path) / "config.json"):
                out.append(CachedCheckpoint(repo.repo_id, rev.commit_hash,
                                            tuple(sorted(rev.refs)), Path(rev.snapshot_path)))
    return out


def _not_cached(model_id: str) -> InputError:
    """One line: where npgemma looked, and which PaliGemma checkpoints are there."""
    repo_id, revision = _split(model_id)
    cached = cached_paligemma()
    same = [c for c in cached if c.repo_id == repo_id]
    if same and revision:
        why = f"revision {revision!r} of {repo_id} is not in"
    else:
        why = "not in"
    listing = ", ".join(c.name for c in cached) or "none"
    return InputError(f"{model_id}: no such folder, and {why} the Hugging Face cache {cache_dir()} "
                      f"(npgemma never downloads; cached PaliGemma checkpoints: {listing})")


def resolve(model) -> Path:
    """A checkpoint folder stays itself; a model id becomes its cached snapshot folder; None is
    the bundled demo model's folder (every entry point without a model passes None here)."""
    if model is None:
        return bundled.model_dir()
    if not is_model_id(model):
        return Path(os.fspath(model))
    hub = _hub(f"{model}: not a folder; reading it as a Hugging Face model id")
    repo_id, revision = _split(model)
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir(),
                                       local_files_only=True)
    except (OSError, ValueError) as e:  # LocalEntryNotFoundError, HFValidationError
        if type(e).__name__ == "IncompleteSnapshotError":  # the snapshot exists but is partial
            raise InputError(f"{model}: the cached snapshot is incomplete "
                             f"({str(e).splitlines()[0]})") from None
        raise _not_cached(model) from None
    return Path(folder)
