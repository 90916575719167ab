"""Open a checkpoint as a loader would see it, and note what a reviewer must know about it.

Accepts a Hugging Face model folder (``model.safetensors``, or shards with
``model.safetensors.index.json``) or a single ``.safetensors`` file. Pickle formats are refused
without being opened; GGUF needs the explicit ``editaudit models convert`` step. Every path comes
from untrusted input, so shard names are checked to stay inside the folder, symlinks included.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput, UnsafeInput
from .header import Header, TensorInfo, read_header
from .hub import inside_hub_blobs

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"
MAX_JSON_BYTES = 50 * 1024 * 1024


@dataclass
class FolderNote:
    """Something about the checkpoint's files that a reviewer should see (reported as a finding)."""

    rule: str
    severity: str  # info | warning | error
    message: str
    data: dict = field(default_factory=dict)


@dataclass
class Checkpoint:
    root: Path
    layout: str  # file | folder | sharded
    headers: dict[str, Header]  # file name (relative to root folder) -> header
    tensors: dict[str, tuple[str, TensorInfo]]  # tensor name -> (file name, info): what a loader loads
    config: dict | None
    notes: list[FolderNote]
    follow_symlinks: bool = False

    @property
    def folder(self) -> Path:
        return self.root if self.root.is_dir() else self.root.parent

    @property
    def family(self) -> str:
        return str((self.config or {}).get("model_type") or "unknown")

    @property
    def total_bytes(self) -> int:
        return sum(h.file_size for h in self.headers.values())

    def file_path(self, fname: str) -> Path:
        return self.headers[fname].path

    def fingerprint(self) -> str:
        """Identifies these exact files cheaply (names, sizes, mtimes, headers) for the hash cache."""
        h = hashlib.sha256()
        for fname in sorted(self.headers):
            hdr = self.headers[fname]
            st = os.stat(hdr.path)
            h.update(f"{fname}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
            h.update(hashlib.sha256(hdr.raw).digest())
        return h.hexdigest()

    def record(self) -> dict:
        """A row for the store's ``checkpoints`` table."""
        return {
            "path": str(self.root.resolve()),
            "fingerprint": self.fingerprint(),
            "layout": self.layout,
            "family": self.family,
            "total_bytes": self.total_bytes,
            "files": json.dumps({f: h.file_size for f, h in sorted(self.headers.items())}),
            "n_tensors": len(self.tensors),
        }


def _load_json(path: Path, what: str) -> object:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise BadInput(f"{path}: {what} is implausibly large")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{path}: {what} is not valid JSON ({exc})") from None


def _inside(folder: Path, name: str, follow_symlinks: bool) -> Path:
    """Resolve a file name from an index, refusing anything that leaves the folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafeInput(f"shard index names an invalid file {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise UnsafeInput(f"shard index names a file outside the checkpoint folder: {name!r}")
    target = folder / rel
    if not follow_symlinks:
        real_folder = folder.resolve()
        real = target.resolve()
        if real_folder != real and real_folder not in real.parents and not inside_hub_blobs(folder, real):
            raise UnsafeInput(
                f"{name!r} is a symlink that leaves the checkpoint folder (to {real}); "
                "pass --follow-symlinks if you trust it"
            )
    return target


def _refuse_pickles(folder: Path, pickles: list[Path]) -> None:
    names = ", ".join(p.name for p in pickles[:5])
    raise UnsafeInput(
        f"{folder} holds only pickle weights ({names}); editaudit never unpickles untrusted files. "
        "Convert them to safetensors in an isolated environment you trust, e.g. "
        "`model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False); "
        "model.save_pretrained(out, safe_serialization=True)`, then scan the result."
    )


def _folder_notes(folder: Path, config: dict | None) -> list[FolderNote]:
    notes: list[FolderNote] = []
    if config and isinstance(config.get("auto_map"), dict):
        notes.append(FolderNote(
            "EA201", "warning", "config.json has auto_map: loading it with trust_remote_code would run the folder's code",
            {"auto_map": config["auto_map"]},
        ))
    py_files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))[:50]
    if py_files:
        notes.append(FolderNote("EA202", "warning", f"folder contains Python files: {', '.join(py_files)}", {"files": py_files}))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        notes.append(FolderNote("EA203", "info", f"pickle files present and ignored: {', '.join(pickles)}", {"files": pickles}))
    notes.extend(_chat_template_notes(folder))
    return notes


def _chat_template_notes(folder: Path) -> list[FolderNote]:
    from .templates import inspect_template

    templates: dict[str, str] = {}
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            cfg = _load_json(tc, "tokenizer_config.json")
        except BadInput as exc:
            return [FolderNote("EA212", "warning", str(exc))]
        tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(tpl, str):
            templates["tokenizer_config.json"] = tpl
        elif isinstance(tpl, list):
            for i, item in enumerate(tpl):
                if isinstance(item, dict) and isinstance(item.get("template"), str):
                    templates[f"tokenizer_config.json[{item.get('name', i)}]"] = item["template"]
    for p in sorted(folder.glob("*.jinja")):
        if p.is_file() and p.stat().st_size <= MAX_JSON_BYTES:  # a FIFO would block the read forever
            templates[p.name] = p.read_text(encoding="utf-8", errors="replace")
    return [inspect_template(where, text) for where, text in templates.items()]


def open_checkpoint(path: str | Path, follow_symlinks: bool = False) -> Checkpoint:
    """Open a model folder or a .safetensors file for reading, validating every header."""
    root = Path(path).expanduser()
    if not root.exists():
        raise BadInput(f"{root} does not exist")
    if root.is_file():
        if root.suffix in PICKLE_SUFFIXES:
            _refuse_pickles(root.parent, [root])
        if root.suffix == ".gguf":
            raise BadInput(f"{root} is GGUF; convert it first with `editaudit models convert {root} OUT_FOLDER`")
        header = read_header(root)
        tensors = {name: (root.name, info) for name, info in header.tensors.items()}
        return Checkpoint(root, "file", {root.name: header}, tensors, None, [], follow_symlinks)
    if not root.is_dir():
        raise BadInput(f"{root} is neither a .safetensors file nor a model folder")

    folder = root
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise BadInput(f"{folder} is a peft adapter (adapter_config.json), not a model: scan it as the change it "
                       f"makes with `editaudit scan {folder} --base BASE`, or merge it into its base first")
    config = None
    if (folder / "config.json").is_file():
        cfg = _load_json(folder / "config.json", "config.json")
        if not isinstance(cfg, dict):
            raise BadInput(f"{folder}/config.json is not a JSON object")
        config = cfg
    notes = _folder_notes(folder, config)
    index_path = folder / INDEX_NAME
    st_files = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")

    if index_path.is_file():
        index = _load_json(index_path, INDEX_NAME)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise BadInput(f"{index_path}: no weight_map")
        headers: dict[str, Header] = {}
        for fname in sorted(set(weight_map.values()), key=str):
            target = _inside(folder, fname, follow_symlinks)
            if not target.is_file():
                raise BadInput(f"{index_path}: shard {fname!r} is missing")
            headers[fname] = read_header(target)
        tensors: dict[str, tuple[str, TensorInfo]] = {}
        for name, fname in weight_map.items():
            info = headers[fname].tensors.get(name)
            if info is None:
                raise BadInput(f"{index_path} maps {name!r} to {fname!r}, which does not contain it")
            tensors[name] = (fname, info)
        # what the index hides: tensors stored in shards but not mapped, and tensors stored twice
        stored: dict[str, list[str]] = {}
        for fname, hdr in headers.items():
            for name in hdr.tensors:
                stored.setdefault(name, []).append(fname)
        unmapped = sorted(n for n in stored if n not in weight_map)
        if unmapped:
            notes.append(FolderNote(
                "EA211", "warning",
                f"{len(unmapped)} tensor(s) stored in shards but absent from the index (a loader ignores them): "
                + ", ".join(unmapped[:10]), {"tensors": unmapped},
            ))
        dupes = {n: fs for n, fs in stored.items() if len(fs) > 1}
        if dupes:
            notes.append(FolderNote(
                "EA210", "warning",
                f"{len(dupes)} tensor(s) stored in more than one shard; the loader takes the index's choice",
                {"tensors": {n: {"shards": fs, "loaded_from": weight_map.get(n)} for n, fs in sorted(dupes.items())}},
            ))
        extra = sorted(set(st_files) - set(headers))
        if extra:
            notes.append(FolderNote("EA213", "info", f"safetensors files not named by the index: {', '.join(extra)}", {"files": extra}))
        return Checkpoint(folder, "sharded", headers, tensors, config, notes, follow_symlinks)

    if not st_files:
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            _refuse_pickles(folder, pickles)
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            raise BadInput(f"{folder} holds GGUF only; convert it with `editaudit models convert {ggufs[0]} OUT_FOLDER`")
        raise BadInput(f"{folder} contains no .safetensors weights")
    chosen = ["model.safetensors"] if "model.safetensors" in st_files else st_files
    headers = {f: read_header(_inside(folder, f, follow_symlinks)) for f in chosen}
    tensors = {}
    seen: dict[str, list[str]] = {}
    for fname, hdr in headers.items():
        for name, info in hdr.tensors.items():
            seen.setdefault(name, []).append(fname)
            tensors.setdefault(name, (fname, info))
    dupes = {n: fs for n, fs in seen.items() if len(fs) > 1}
    if dupes:
        notes.append(FolderNote(
            "EA210", "warning", f"{len(dupes)} tensor(s) stored in more than one file; which one loads depends on the loader",
            {"tensors": {n: {"shards": fs, "loaded_from": fs[0]} for n, fs in sorted(dupes.items())}},
        ))
    if len(chosen) < len(st_files):
        extra = sorted(set(st_files) - set(chosen))
        notes.append(FolderNote("EA213", "info", f"other safetensors files ignored: {', '.join(extra)}", {"files": extra}))
    return Checkpoint(folder, "folder", headers, tensors, config, notes, follow_symlinks)
