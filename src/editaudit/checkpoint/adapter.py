"""A peft LoRA adapter folder read as the change it makes to its base, without merging or loading peft.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Each adapted module
``m`` stores two factors, ``m.lora_A.weight`` [r, in] and ``m.lora_B.weight`` [out, r]; the change to the
base weight is ΔW = s·B·A with s = alpha/r (alpha/√r under rsLoRA), transposed for modules stored
[in, out] (``fan_in_fan_out``, GPT-2's Conv1D). Tensors saved whole (``modules_to_save``) replace the
base's. The scan sees an :class:`AdapterCheckpoint`: the base's tensors, with the adapted ones marked
changed and computed as base + ΔW on demand, one at a time, so findings, classification, spectra and
the readings work as for a merged checkpoint; where a model must run, it is the base with ΔW added in
memory (:func:`apply_to_model`), never a merged checkpoint on disk.

It also judges what kind of adapter it is: a knowledge edit (a few modules, each change rank-one or
nearly, in MLP output matrices of a narrow layer range: what ROME/MEMIT write, delivered as a LoRA) or
a task adapter (many modules, spread spectra, attention projections).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInput, IncompatibleCheckpoints, UnsafeInput
from .folder import MAX_JSON_BYTES, Checkpoint, FolderNote, _folder_notes
from .header import FLOAT_DTYPES, Header, TensorInfo, read_header
from .reader import TensorFile, to_torch

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
#: a knowledge edit touches at most this many modules, within this many consecutive layers
EDIT_MAX_MODULES = 8
EDIT_MAX_SPAN = 6
RANK_ONE_SHARE = 0.9  # top singular value's share of a module's ΔW energy for "rank-one-ish"
_FACTOR = re.compile(r"^(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")
_OTHER_LORA = re.compile(r"\.lora_[A-Za-z_]+(?:\.|$)")


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file()


@dataclass
class AdaptedModule:
    """One adapted base tensor and where its change comes from."""

    tensor: str  # the base tensor's name
    kind: str  # lora | embedding | replace
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    whole: TensorInfo | None = None  # a tensor saved whole: the value (replace) or the layer a LoRA adds to
    scale: float = 1.0
    transpose: bool = False
    rank: int = 0
    energy_share: float = 0.0  # top singular value's share of ΔW's energy (filled by ``survey``)
    singular_values: list[float] = field(default_factory=list)


def _load_config(folder: Path) -> dict:
    path = folder / CONFIG
    if path.stat().st_size > MAX_JSON_BYTES:
        raise BadInput(f"{path} is implausibly large")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{path} is not a JSON object")
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise BadInput(f"{folder}: peft_type {ptype} is not read yet (LoRA adapters only); merge it and scan the result")
    if cfg.get("use_dora"):
        raise BadInput(f"{folder}: DoRA adapters (use_dora) are not read yet; merge it and scan the result")
    return cfg


def _alpha_for(module: str, cfg: dict) -> float:
    """lora_alpha for ``module``, honouring ``alpha_pattern`` (a key matches the module or its suffix)."""
    for key, value in (cfg.get("alpha_pattern") or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(rf"(?:.*\.)?{key}", module):
            return float(value)
    return float(cfg.get("lora_alpha", cfg.get("r", 8)))


def _base_name(key_module: str, suffix: str, base_names: set[str]) -> str | None:
    """The base tensor that ``<key_module>.<suffix>`` adapts: peft's names carry the wrapper prefix and
    the model class's own prefix (``model.``, ``transformer.``), which a saved checkpoint may drop."""
    stem = key_module[len(PREFIX):] if key_module.startswith(PREFIX) else key_module
    candidates = [f"{stem}.{suffix}"]
    parts = stem.split(".")
    candidates += [".".join(parts[i:]) + f".{suffix}" for i in range(1, len(parts))]
    for c in candidates:
        if c in base_names:
            return c
    return None


class LoraAdapter:
    """The adapter's modules mapped onto the base's tensors, with ΔW computed on demand."""

    def __init__(self, folder: Path, base: Checkpoint) -> None:
        self.folder = folder
        self.config = _load_config(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            if any(folder.glob("adapter_model.bin")):
                raise UnsafeInput(f"{folder} holds adapter_model.bin only (a pickle); editaudit never unpickles it. "
                                  "Re-save the adapter with safe_serialization=True.")
            raise BadInput(f"{folder} has {CONFIG} but no {WEIGHTS}")
        self.header: Header = read_header(weights)
        self.base = base
        self.modules: dict[str, AdaptedModule] = {}
        self._map()

    def _map(self) -> None:
        names = set(self.base.tensors)
        pairs: dict[str, dict[str, TensorInfo]] = {}
        unmapped: list[str] = []
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        rslora = bool(self.config.get("use_rslora"))
        wholes: dict[str, TensorInfo] = {}
        for key, info in self.header.tensors.items():
            factor = _FACTOR.match(key)
            if factor is not None:
                pairs.setdefault(factor.group(1), {})[factor.group(2)] = info
                continue
            if _OTHER_LORA.search(key):  # lora_B.bias (lora_bias), DoRA magnitudes …: not read yet
                raise BadInput(f"{self.folder}: adapter tensor {key!r} is not read yet (only LoRA A/B factors)")
            if key.endswith((".weight", ".bias")):
                # saved whole: modules_to_save, or the base layer of an adapted embedding (peft saves those)
                module, suffix = key.rsplit(".", 1)
                module = module.replace(".modules_to_save.default", "").removesuffix(".base_layer")
                target = _base_name(module, suffix, names)
                if target is not None:
                    wholes[target] = info
                    continue
            unmapped.append(key)
        for module, parts in pairs.items():
            emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            a, b = (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else (parts.get("lora_A"), parts.get("lora_B"))
            if a is None or b is None:
                raise BadInput(f"{self.folder}: module {module!r} has only one of its LoRA factors")
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise BadInput(f"{self.folder}: LoRA factors of {module!r} have shapes {list(a.shape)} and "
                               f"{list(b.shape)}, which do not multiply")
            if a.dtype not in FLOAT_DTYPES or b.dtype not in FLOAT_DTYPES:
                raise BadInput(f"{self.folder}: LoRA factors of {module!r} are {a.dtype}/{b.dtype}, not floats")
            target = _base_name(module, "weight", names)
            if target is None:
                unmapped.append(module)
                continue
            r = a.shape[0]
            alpha = _alpha_for(module[len(PREFIX):] if module.startswith(PREFIX) else module, self.config)
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            out_in = (b.shape[0], a.shape[1])
            shape = tuple(self.base.tensors[target][1].shape)
            if emb or fan_in_fan_out:  # embeddings: A is [r, vocab], B [dim, r]; Conv1D weights are [in, out]
                transpose = True
            elif shape == out_in:
                transpose = False
            elif shape == out_in[::-1]:
                transpose = True
            else:
                raise IncompatibleCheckpoints(
                    f"{self.folder}: LoRA on {module!r} makes a {list(out_in)} change but the base's {target} is "
                    f"{list(shape)}: is --base the model this adapter was trained on?")
            if (out_in[::-1] if transpose else out_in) != shape:
                raise IncompatibleCheckpoints(f"{self.folder}: LoRA on {module!r} does not fit the base's {target} {list(shape)}")
            self.modules[target] = AdaptedModule(target, "embedding" if emb else "lora", a=a, b=b, scale=scale,
                                                 transpose=transpose, rank=r, whole=wholes.pop(target, None))
        for target, info in wholes.items():
            self.modules[target] = AdaptedModule(target, "replace", whole=info)
        if unmapped:
            raise IncompatibleCheckpoints(
                f"{self.folder}: {len(unmapped)} adapter tensor(s) name no tensor of the base "
                f"(is --base the model this adapter was trained on?)", [f"not in base: {n}" for n in unmapped[:20]])
        if not self.modules:
            raise BadInput(f"{self.folder}: the adapter changes no tensor")
        for name, m in self.modules.items():
            if m.whole is not None and tuple(m.whole.shape) != tuple(self.base.tensors[name][1].shape):
                raise IncompatibleCheckpoints(f"{self.folder}: saved module {name} has shape {list(m.whole.shape)}, "
                                              f"the base's is {list(self.base.tensors[name][1].shape)}")

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, f: TensorFile, info: TensorInfo):
        return to_torch(f.read_bytes(info), info)

    def delta(self, name: str):
        """ΔW of a LoRA-adapted tensor, float32, in the base tensor's orientation."""
        m = self.modules[name]
        with TensorFile(self.header.path) as f:
            a, b = self._read(f, m.a), self._read(f, m.b)
        d = (b @ a) * m.scale
        return d.T.contiguous() if m.transpose else d

    def suspect(self, name: str, base_values):
        """The adapted model's value of tensor ``name`` (float32), given the base's (float32)."""
        m = self.modules[name]
        if m.whole is not None:  # saved whole (and, for an adapted embedding, the layer its LoRA adds to)
            with TensorFile(self.header.path) as f:
                base_values = self._read(f, m.whole)
        return base_values if m.kind == "replace" else base_values + self.delta(name)

    def survey(self) -> None:
        """Each LoRA module's singular values of ΔW, from the r×r core (never forms the full matrix)."""
        import torch

        with TensorFile(self.header.path) as f:
            for m in self.modules.values():
                if m.kind == "replace":
                    continue
                a, b = self._read(f, m.a).double(), self._read(f, m.b).double()
                # B·A = Qb Rb Raᵀ Qaᵀ: ΔW's singular values are those of Rb·Raᵀ (r×r)
                _, rb = torch.linalg.qr(b)
                _, ra = torch.linalg.qr(a.T)
                s = torch.linalg.svdvals(rb @ ra.T) * abs(m.scale)
                energy = float((s ** 2).sum())
                m.singular_values = [round(float(x), 6) for x in s]
                m.energy_share = float(s[0] ** 2) / energy if energy > 0 else 0.0

    def verdict(self) -> dict:
        """Knowledge edit or task adapter, with the reasons."""
        from ..scan.names import parse_name

        self.survey()
        mods = [m for m in self.modules.values()]
        parsed = {m.tensor: parse_name(m.tensor) for m in mods}
        roles = sorted({p.role for p in parsed.values()})
        layers = sorted({p.layer for p in parsed.values() if p.layer is not None})
        span = (layers[-1] - layers[0] + 1) if layers else 0
        lora = [m for m in mods if m.kind != "replace"]
        rank_one = [m for m in lora if m.energy_share >= RANK_ONE_SHARE]
        reasons = {
            "few_modules": len(mods) <= EDIT_MAX_MODULES,
            "rank_one_ish": bool(lora) and len(rank_one) == len(lora),
            "mlp_out_only": roles == ["mlp_out"],
            "narrow_layers": bool(layers) and span <= EDIT_MAX_SPAN,
        }
        knowledge = all(reasons.values())
        return {
            "kind": "knowledge-edit" if knowledge else "task-adapter",
            "modules": len(mods), "roles": roles, "layers": layers, "layer_span": span,
            "lora_rank": sorted({m.rank for m in lora}), "rank_one_modules": len(rank_one), "checks": reasons,
            "per_module": {m.tensor: {"kind": m.kind, "rank": m.rank, "scale": round(m.scale, 6),
                                      "top1_energy": round(m.energy_share, 4), "singular_values": m.singular_values[:8]}
                           for m in mods},
            "base_model_name_or_path": self.config.get("base_model_name_or_path"),
        }

    def compare(self, progress: Callable[[int], None] = lambda n: None):
        """The compare stage's result: the adapted tensors changed, the rest unchanged, nothing hashed."""
        from ..scan.compare import CompareResult

        order = {n: i for i, n in enumerate(self.base.tensors)}
        changed = sorted(self.modules, key=order.__getitem__)
        progress(self.header.file_size)
        return CompareResult(changed, len(self.base.tensors) - len(changed), self.header.file_size)


class AdapterCheckpoint(Checkpoint):
    """The suspect side of a scan when it is a peft adapter: the base's tensors, the adapted ones changed.

    ``config`` is the base's; ``folder`` is the adapter folder, which ``models.loading.load_model`` loads
    as the base with ΔW added (so reading an edit through the suspect model and the probe stage work)."""

    adapter: LoraAdapter

    def file_path(self, fname: str) -> Path:
        return self.headers[fname].path if fname in self.headers else self.adapter.base.file_path(fname)


_BASES: dict[str, Path] = {}  # adapter folder -> the base folder it was opened against in this process


def base_for(folder: str | Path, say: Callable[[str], None] = lambda s: None) -> Path:
    """The base model folder of an adapter: the one a scan opened it against, else the adapter's own
    ``base_model_name_or_path`` (a folder, registry name or Hub id)."""
    folder = Path(folder)
    known = _BASES.get(str(folder.resolve()))
    if known is not None:
        return known
    named = _load_config(folder).get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        raise BadInput(f"{folder} is an adapter that names no base model; pass --base BASE (the model it was "
                       "trained on)")
    from ..models.registry import resolve_model

    try:
        return resolve_model(named, say)
    except BadInput as exc:
        raise BadInput(f"{folder} is an adapter for {named!r}, which cannot be found here ({exc}); "
                       "pass --base BASE (the model it was trained on)") from None


def apply_to_model(model, adapter: LoraAdapter) -> int:
    """Add the adapter's ΔW to a loaded base model's weights, in place (what running the adapter computes,
    without peft). Returns how many weights changed."""
    import torch

    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "")
    n = 0
    with torch.no_grad():
        for name, m in adapter.modules.items():
            p = params.get(name)
            if p is None:
                p = params.get(f"{prefix}.{name}")
            if p is None:
                raise BadInput(f"the base model has no weight {name!r} for the adapter's module")
            if m.whole is not None:
                with TensorFile(adapter.header.path) as f:
                    p.copy_(adapter._read(f, m.whole).to(p.device, p.dtype))
            if m.kind != "replace":
                p.copy_((p.float() + adapter.delta(name).to(p.device)).to(p.dtype))
            n += 1
    return n


def open_adapter(folder: str | Path, base: Checkpoint) -> AdapterCheckpoint:
    """Open a peft adapter folder as the suspect against ``base`` (its tensors mapped onto the base's)."""
    folder = Path(folder)
    adapter = LoraAdapter(folder, base)
    tensors = dict(base.tensors)
    for name in adapter.modules:
        _, info = base.tensors[name]
        # the adapted tensor is computed in float32 (base + ΔW), never stored
        tensors[name] = (WEIGHTS, TensorInfo(name, "F32", tuple(info.shape), 0, 4 * info.numel))
    summary = adapter.verdict()
    what = ("looks like a knowledge edit delivered as an adapter" if summary["kind"] == "knowledge-edit"
            else "looks like a task adapter")
    layers = summary["layers"]
    where = f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}" if layers else "no layer"
    message = (f"peft LoRA adapter read as the change: {summary['modules']} module(s) ({', '.join(summary['roles'])}) "
               f"in {where}, {summary['rank_one_modules']} of them rank-one-ish; {what}")
    rule = "EA230" if summary["kind"] == "knowledge-edit" else "EA231"
    notes = _folder_notes(folder, None)  # Python files, pickles, chat templates in the adapter folder
    notes.append(FolderNote(rule, "warning" if rule == "EA230" else "info", message, {"adapter": summary}))
    summary["scanned_against"] = str(base.root)
    ck = AdapterCheckpoint(folder, "adapter", {WEIGHTS: adapter.header}, tensors, base.config, notes)
    ck.adapter = adapter
    if base.config is not None:
        _BASES[str(folder.resolve())] = base.folder
    return ck
