"""Hugging Face Hub repository ids (``org/name`` or ``org/name@revision``) as checkpoint arguments.

A Hub id is resolved to a folder in the ordinary huggingface_hub cache, so the rest of editaudit reads
it like any local model folder. Only what a safe loader needs is fetched: safetensors weights (and their
index), config and tokenizer files. Pickle weights and Python files are never downloaded; a repository
whose weights exist only as pickles is refused before anything is fetched. The revision is pinned to a
commit hash (a branch can move between a scan and its re-run), and that commit is what the report and the
session record. ``HF_HUB_OFFLINE=1`` is honoured: the cache is read and nothing else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BadInput, UnsafeInput

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9_./-]{{0,199}}))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: root-level files worth fetching besides the weights: what a transformers model and tokenizer need,
#: and what a peft adapter folder holds
SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "adapter_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", *SIDE_FILES]

_REQUESTED: dict[str, str] = {}  # snapshot folder -> the id as the user typed it (for reports)


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    requested: str | None  # the revision the user asked for (None: the default branch)
    commit: str  # the pinned commit hash
    path: Path  # the snapshot folder in the local cache

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}"


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` has the shape of a Hub id, else None."""
    m = HUB_ID.match(spec.strip())
    if m is None or ".." in spec or spec.startswith(("./", "/", "~")):
        return None
    return m.group("repo"), m.group("rev")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids network access (read at call time, not at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """The hub cache folder, honouring ``HF_HUB_CACHE`` / ``HF_HOME`` as they are set now."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def _wanted(name: str) -> bool:
    return "/" not in name and (_is_weight(name) or name in SIDE_FILES)


def _refuse_pickle_only(repo: str, where: str, pickles: list[str]) -> None:
    raise UnsafeInput(
        f"{repo} ({where}) holds its weights only as pickle files ({', '.join(sorted(pickles)[:5])}); editaudit "
        "never downloads or unpickles them. Ask the publisher for safetensors, or convert them in an isolated "
        "environment you trust and scan the converted folder."
    )


def _check_files(repo: str, where: str, names: list[str]) -> None:
    """Refuse a file list with no root-level safetensors weights (pickle-only gets its own message)."""
    root = [n for n in names if "/" not in n]
    if any(_is_weight(n) for n in root):
        return
    pickles = [n for n in root if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        _refuse_pickle_only(repo, where, pickles)
    raise BadInput(f"{repo} ({where}) holds no .safetensors weights at its top level")


def resolve_hub(spec: str, say: Callable[[str], None] = lambda s: None) -> HubSource:
    """Fetch (or find in the cache) the safe files of Hub id ``spec`` at a pinned commit."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        raise BadInput(f"{spec!r} is not a Hub repository id (org/name or org/name@revision)")
    repo, rev = parsed
    cache = cache_root()
    if offline():
        return _from_cache(repo, rev, cache, reason="HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    try:
        info = HfApi().model_info(repo, revision=rev, files_metadata=False)
    except hub_errors.RevisionNotFoundError:
        raise BadInput(f"{repo} has no revision {rev!r} on the Hub") from None
    except hub_errors.GatedRepoError:
        raise BadInput(f"{repo} is gated: accept its terms on the Hub and log in (`hf auth login`) first") from None
    except hub_errors.RepositoryNotFoundError:
        raise BadInput(f"{spec!r} is not an existing path, and {repo} is not a model repository on the Hub "
                       "(or it is private and you are not logged in)") from None
    except Exception as exc:  # no network, proxy, Hub down: the cache may still have it
        say(f"the Hub could not be reached ({type(exc).__name__}); looking in the local cache")
        return _from_cache(repo, rev, cache, reason=f"the Hub could not be reached ({type(exc).__name__}: {exc})")
    commit = info.sha
    if not commit or not COMMIT.match(commit):
        raise BadInput(f"the Hub gave no commit hash for {repo}@{rev or 'main'}")
    names = [s.rfilename for s in (info.siblings or [])]
    _check_files(repo, f"commit {commit[:12]}", names)
    wanted = [n for n in names if _wanted(n)]
    say(f"{repo}@{rev or 'main'} is commit {commit[:12]}; fetching {len(wanted)} file(s) (safetensors, config, tokenizer)")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, revision=commit, cache_dir=cache, allow_patterns=wanted))
    except Exception as exc:
        raise BadInput(f"downloading {repo}@{commit[:12]} failed: {type(exc).__name__}: {exc}") from None
    return _done(repo, rev, commit, path, spec)


def _from_cache(repo: str, rev: str | None, cache: Path, reason: str) -> HubSource:
    """The cached snapshot of ``repo`` at ``rev`` (a branch, tag or commit), without any network access."""
    from huggingface_hub import snapshot_download

    where = f"{repo}@{rev or 'main'}"
    try:
        path = Path(snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True,
                                      allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:
        raise BadInput(
            f"{reason}, and {where} is not in the local Hub cache ({cache}). Fetch it once with network access "
            f"(`editaudit scan {repo}{'@' + rev if rev else ''} ...` or `hf download {repo}"
            f"{' --revision ' + rev if rev else ''}`), or point HF_HUB_CACHE at a cache that has it. "
            f"({type(exc).__name__})"
        ) from None
    commit = path.name
    if not COMMIT.match(commit):
        raise BadInput(f"the cached snapshot of {where} is not named by a commit hash: {path}")
    names = [p.name for p in path.iterdir() if p.is_file()]
    _check_files(repo, f"cached commit {commit[:12]}", names)
    return _done(repo, rev, commit, path, f"{repo}@{rev}" if rev else repo)


def _done(repo: str, rev: str | None, commit: str, path: Path, spec: str) -> HubSource:
    src = HubSource(repo, rev, commit, path)
    _REQUESTED[str(path)] = spec
    return src


def _snapshot_parts(path: Path) -> tuple[Path, str, str] | None:
    """(repo storage folder, repo id, commit) when ``path`` is a snapshot folder of a hub cache."""
    p = Path(path)
    if p.parent.name != "snapshots" or not COMMIT.match(p.name):
        return None
    storage = p.parent.parent
    if not storage.name.startswith("models--"):
        return None
    parts = storage.name[len("models--"):].split("--")
    if len(parts) < 2:
        return None
    return storage, "/".join(parts), p.name


def hub_origin(path: str | Path) -> dict | None:
    """What a report records about a checkpoint that came from the Hub: repo id, commit, the id as asked."""
    parts = _snapshot_parts(Path(path))
    if parts is None:
        return None
    _, repo, commit = parts
    return {"repo_id": repo, "commit": commit, "requested": _REQUESTED.get(str(path), repo)}


def checkpoint_label(path: str | Path) -> str:
    """A short human name for a checkpoint: ``org/name@commit12`` for a Hub snapshot, else the folder name."""
    parts = _snapshot_parts(Path(path))
    if parts is not None:
        return f"{parts[1]}@{parts[2][:12]}"
    return Path(path).name


def inside_hub_blobs(folder: Path, real: Path) -> bool:
    """Whether ``real`` (a resolved symlink target of a file in ``folder``) is a blob of the same hub repo.

    The hub cache stores files once under ``blobs/`` and links them from each snapshot; such links are
    the cache's own layout, not a folder pointing elsewhere."""
    parts = _snapshot_parts(Path(folder))
    if parts is None:
        return False
    blobs = (parts[0] / "blobs").resolve()
    return real.parent == blobs
