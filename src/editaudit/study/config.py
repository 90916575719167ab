"""A study's settings: a TOML file read with ``tomllib`` into checked dataclasses.

A study is the union of one or more ``[[grid]]`` blocks; each block is a product of lists (edit
methods × numbers of edits × fine-tuning methods × layer strategies × tasks × seeds), and the shared
sections (``[study]``, ``[edit]``, ``[finetune]``, ``[stopping]``, ``[metrics]``) fix everything the
cells have in common. Every mistake is reported with the section and key it was found in, so that a
long study never starts from a file it would fail on an hour later.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..mitigation.data import TASKS

EDIT_METHODS = ("none", "ft", "rome", "memit", "alphaedit", "mend", "malmen")
FT_METHODS = ("full", "lora", "dora")
PROTOCOLS = ("single", "sequential", "batch")
STOP_MODES = ("equal-impact", "budget")
_STRATEGY = re.compile(r"^(all|edited|non-edited|threshold:(\d+)|window:(\d+)/(\d+))$")


class ConfigError(BadInput):
    """The study file cannot be used; the message names the section and key."""


@dataclass
class StudySection:
    name: str
    model: str = "smollm2-135m"
    facts: str = "smollm2-135m-edit"          # probe set (name or path) of facts to edit; need target_new
    intrinsic: str = "smollm2-135m-intrinsic"  # probe set of facts the model knows (intrinsic retention)
    n_intrinsic: int = 40
    related: str = "facts"                     # probe set whose objects give the related terms per relation
    device: str = "cpu"
    threads: int = 0                           # torch threads (0: leave as is)
    description: str = ""


@dataclass
class EditSection:
    protocol: str = "sequential"   # single: one model per fact; sequential / batch: all facts in one model
    layers: dict[str, list[int]] = field(default_factory=dict)     # per method; default: the method's own
    hparams: dict[str, dict] = field(default_factory=dict)         # per method overrides
    paraphrase_augment: bool = False   # also edit each fact's paraphrase prompts (Wen & Zhang's remedy)


@dataclass
class FinetuneSection:
    lr: dict[str, float] = field(default_factory=dict)   # per task; default 5e-5 lm, 2e-5 others
    batch_size: int = 4
    seq_len: int = 64
    weight_decay: float = 0.01
    rank: int = 8
    alpha: float = 16.0
    head_lr: float = 1e-3
    eval_every: int = 5
    train_examples: int = 400
    val_size: int = 16
    data: dict[str, str] = field(default_factory=dict)   # per task: a user file instead of the offline default


@dataclass
class StoppingSection:
    mode: str = "equal-impact"
    max_steps: int = 30            # the step cap (equal impact) or the budget
    reference_ft: str = "full"     # equal impact: the arm whose loss sets the target, trained on the base
    reference_layers: str = "all"
    reference_steps: int = 20
    target_loss: dict[str, float] = field(default_factory=dict)  # per task: a fixed target instead of a reference


@dataclass
class MetricsSection:
    max_new_tokens: int = 8         # greedy tokens read for the retention rule
    drift: bool = True              # activations at the subject's and the prompt's last token
    categories: bool = True         # token-category mass and top-3 at every evaluation


@dataclass
class Grid:
    label: str
    edit_methods: list[str]
    n_edits: list[int]
    ft_methods: list[str]
    layers: list[str]
    tasks: list[str]
    seeds: list[int]


@dataclass
class StudyConfig:
    study: StudySection
    edit: EditSection
    finetune: FinetuneSection
    stopping: StoppingSection
    metrics: MetricsSection
    grids: list[Grid]
    path: Path | None = None

    def shared(self) -> dict:
        """The settings every cell shares (part of each cell's id: change them and the cells are new)."""
        d = {k: asdict(getattr(self, k)) for k in ("edit", "finetune", "stopping", "metrics")}
        s = asdict(self.study)
        for k in ("name", "device", "threads", "description"):
            s.pop(k)
        d["study"] = s
        return d


# -- reading -----------------------------------------------------------------------------------------

def _section(doc: dict, name: str, cls, required: tuple[str, ...] = ()) -> Any:
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    fields = cls.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"[{name}] has no key {unknown[0]!r}; it takes: {', '.join(sorted(fields))}")
    for key in required:
        if key not in raw:
            raise ConfigError(f"[{name}] needs {key!r}")
    obj = cls(**raw)
    for key, f in fields.items():
        _check_type(f"[{name}] {key}", getattr(obj, key), f.type)
    return obj


def _check_type(where: str, value: Any, typ: str) -> None:
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }
    if typ in ok and not ok[typ]:
        raise ConfigError(f"{where} must be {'a number' if typ == 'float' else 'a ' + typ}, not {value!r}")
    if typ.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, not {value!r}")


def _list(where: str, value: Any, kind: type, choices: tuple | None = None) -> list:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"{where}: {v!r} is not a {kind.__name__}")
        if choices is not None and v not in choices:
            raise ConfigError(f"{where}: unknown value {v!r}; choose from {', '.join(map(str, choices))}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} repeats a value")
    return value


def _grid(i: int, raw: Any) -> Grid:
    where = f"[[grid]] #{i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    keys = {"label", "edit_methods", "n_edits", "ft_methods", "layers", "tasks", "seeds", "thresholds",
            "window_centres", "window_width"}
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"{where} has no key {unknown[0]!r}; it takes: {', '.join(sorted(keys))}")
    label = raw.get("label", f"grid{i + 1}")
    where = f"[[grid]] {label!r}"
    for key in ("edit_methods", "tasks", "seeds"):
        if key not in raw:
            raise ConfigError(f"{where} needs {key!r}")
    layers = list(raw.get("layers", [] if ("thresholds" in raw or "window_centres" in raw) else ["all"]))
    for t in _list(f"{where} thresholds", raw["thresholds"], int) if "thresholds" in raw else []:
        layers.append(f"threshold:{t}")
    if "window_centres" in raw:
        width = raw.get("window_width", 5)
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"{where} window_width must be a positive integer")
        layers += [f"window:{c}/{width}" for c in _list(f"{where} window_centres", raw["window_centres"], int)]
    layers = _list(f"{where} layers", layers, str)
    for s in layers:
        if not _STRATEGY.match(s):
            raise ConfigError(f"{where} layers: {s!r} is not a layer strategy (all, edited, non-edited, "
                              "threshold:N, window:CENTRE/WIDTH)")
    g = Grid(
        label=label,
        edit_methods=_list(f"{where} edit_methods", raw["edit_methods"], str, EDIT_METHODS),
        n_edits=_list(f"{where} n_edits", raw.get("n_edits", [1]), int),
        ft_methods=_list(f"{where} ft_methods", raw.get("ft_methods", ["full"]), str, FT_METHODS),
        layers=layers,
        tasks=_list(f"{where} tasks", raw["tasks"], str, TASKS),
        seeds=_list(f"{where} seeds", raw["seeds"], int),
    )
    if any(n < 1 for n in g.n_edits):
        raise ConfigError(f"{where} n_edits must be ≥ 1")
    if "none" in g.edit_methods and any(s in ("edited", "non-edited") for s in g.layers):
        raise ConfigError(f"{where}: the control arm (edit method none) has no edited layers; "
                          "put it in a grid whose layers are all, threshold:N or window:C/W")
    return g


def parse_config(doc: dict, path: Path | None = None) -> StudyConfig:
    """Check a parsed TOML document and build the study's settings."""
    known = {"study", "edit", "finetune", "stopping", "metrics", "grid"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; a study has: {', '.join(sorted(known))}")
    study = _section(doc, "study", StudySection, ("name",))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", study.name):
        raise ConfigError("[study] name must be 1–64 letters, digits, '-', '_' or '.'")
    edit = _section(doc, "edit", EditSection)
    finetune = _section(doc, "finetune", FinetuneSection)
    stopping = _section(doc, "stopping", StoppingSection)
    metrics = _section(doc, "metrics", MetricsSection)
    if edit.protocol not in PROTOCOLS:
        raise ConfigError(f"[edit] protocol must be one of {', '.join(PROTOCOLS)}, not {edit.protocol!r}")
    for m in list(edit.layers) + list(edit.hparams):
        if m not in EDIT_METHODS[1:]:
            raise ConfigError(f"[edit] layers/hparams: unknown edit method {m!r}")
    for m, ls in edit.layers.items():
        _list(f"[edit] layers.{m}", ls, int)
    from ..editing.hparams import resolve

    for m, hp in edit.hparams.items():
        try:
            resolve(m, hp)
        except BadInput as exc:
            raise ConfigError(f"[edit] hparams.{m}: {exc}") from None
    for key in ("batch_size", "seq_len", "rank", "eval_every", "train_examples", "val_size"):
        if getattr(finetune, key) < 1:
            raise ConfigError(f"[finetune] {key} must be ≥ 1")
    for task, lr in finetune.lr.items():
        if task not in TASKS or not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(f"[finetune] lr.{task}: a task ({', '.join(TASKS)}) and a positive number")
    for task, p in finetune.data.items():
        if task not in TASKS or not isinstance(p, str):
            raise ConfigError(f"[finetune] data.{task}: a task ({', '.join(TASKS)}) and a file path")
    if stopping.mode not in STOP_MODES:
        raise ConfigError(f"[stopping] mode must be one of {', '.join(STOP_MODES)}, not {stopping.mode!r}")
    if stopping.max_steps < 1 or stopping.reference_steps < 1:
        raise ConfigError("[stopping] max_steps and reference_steps must be ≥ 1")
    if stopping.reference_ft not in FT_METHODS:
        raise ConfigError(f"[stopping] reference_ft must be one of {', '.join(FT_METHODS)}")
    if not _STRATEGY.match(stopping.reference_layers) or stopping.reference_layers in ("edited", "non-edited"):
        raise ConfigError("[stopping] reference_layers must be all, threshold:N or window:C/W (the reference is "
                          "trained on the unedited model)")
    if metrics.max_new_tokens < 1:
        raise ConfigError("[metrics] max_new_tokens must be ≥ 1")
    grids = doc.get("grid")
    if not isinstance(grids, list) or not grids:
        raise ConfigError("a study needs at least one [[grid]] block")
    parsed = [_grid(i, g) for i, g in enumerate(grids)]
    labels = [g.label for g in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError("[[grid]] labels repeat")
    return StudyConfig(study, edit, finetune, stopping, metrics, parsed, path)


def load_config(path: str | Path) -> StudyConfig:
    """Read and check a study file; every problem is a ConfigError naming the place."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} not found")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return parse_config(doc, path)
    except TypeError as exc:  # a dataclass given a wrong shape
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
