"""Base-free screen by key gain: an edited matrix acts strongly along the edit direction of a *real* key.

ROME writes ΔW = Λ (C⁻¹k*)ᵀ (MEMIT a sum of such rows), so along û* = C⁻¹k*/‖C⁻¹k*‖ the suspect's matrix has the
gain ‖ΔW û*‖ = σ(ΔW) on top of what the trained matrix does there, which is little: C⁻¹k points into C's low-energy
directions, where training barely moved W. The spectral screen (``nobase.py``) looks for σ(ΔW) among *all*
directions of C's low half and loses it among the matrix's own components of that size; but those are not
directions of the form C⁻¹k for any key the model makes. So each text x is scored, per layer, by

    g(x) = ‖W û(x)‖ / (‖W‖_F / √d_in),   û(x) = C⁻¹k(x) / ‖C⁻¹k(x)‖,   z(x) = (g(x) − median) / MAD

(k(x): the matrix's input at the text's last token after "The"; median and MAD over every vocabulary token's key).
On development ROME edits of SmolLM2-135M the edited subject's whole key stood 72–125 MADs out, its layer's other
texts 10–45, and unedited layers' best texts after a search 9–22 (``scripts/dev/nobase_gain_search.py``).

The screen never sees the subject, so per layer it scores the starts the subject search would take from names: the
``NAMES`` tokens whose keys behind a stand-in first piece (``subjects.name_piece``) gain most, each given the first
piece a gradient step chooses (``SubjectSearch._name_start``). Single tokens after "The" are no starts: on the
unedited SmolLM2-135M two common ones stand out of their layers by themselves (" just" at layer 7, "1" at layer 27),
while the edits tried were found as name pairs ("isenu", "Bukak", "is Lorraine"). A layer is flagged when its best start stands
``RATIO`` times above the median start: an edit's key is an outlier among the layer's own best texts, a measure
that needs no calibration across layers or models. The flagged layer's best start is then climbed and trimmed
into the subject the reader reads.

Which editor wrote a flagged layer (``null_lean``): ROME and MEMIT write a subject's key k into ΔW along C⁻¹k, AlphaEdit
along its null-space part P k (P: C's eigen-directions under a share of the median eigenvalue, the editor's own rule),
and of all unit directions each editor's update acts most along its own. So the flagged start's key is scored along
both, each gain with the trained matrix's typical gain there taken off (the vocabulary's median m):

    e = √(g² − m²),   lean = e_P / e_C

For an update of size s along û_P (AlphaEdit) e_P ≈ s and e_C ≈ s·|û_P·û_C|, so the lean is 1/|cos| > 1; along û_C
(ROME, MEMIT) it is |cos| < 1.

Several edits in one matrix (ROME edits in sequence) leave several such keys, but the strongest hides the others: the
median start of a flagged layer is itself raised by it. So the found subject's edit direction is taken out of the
matrix, W ← W − (W û)ûᵀ, the layer's starts are scored again, and a start that now stands ``DEFLATED_RATIO`` times
above the median start is grown into the next subject, until none does (``more_subjects``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

#: Name-piece starts per layer: the best tokens behind the stand-in first piece, each given its own first piece.
NAMES = 16
#: A layer is flagged when its best start's z is this many times the median start's. Fixed from the unedited
#: SmolLM2-135M's 30 layers (bench/results/gain_tables_dev.txt: its name table at most 1.7x); see docs/scan.md.
RATIO = 3.0
#: In a flagged layer, once the subjects found are taken out of the matrix, a further start is read when it stands this
#: many times above the median start. Set on a development ROME sequence of spent facts (v13 35-89: the next four
#: edited names stood 1.8-2.4x, then 1.5x), above the unedited SmolLM2-135M's best layer (1.70x); only layers the
#: screen flagged at ``RATIO`` are searched again, so an unedited checkpoint is not affected.
DEFLATED_RATIO = 1.75
#: C's eigenvalues are floored at this share of the largest, so that a direction the corpus never reached does not
#: dominate every C⁻¹k.
FLOOR = 1e-6


class GainSpace:
    """One MLP output matrix's gain on the edit directions of keys, as z over the vocabulary. It serves the subject
    search as its ``space`` (``path``, ``fire``; ``basis`` is unused here), so the search climbs texts by z."""

    def __init__(self, path: str, weight: torch.Tensor, ev: torch.Tensor, Q: torch.Tensor, floor: float = FLOOR):
        """``weight`` [d_out, d_in]; ``ev``, ``Q``: C's eigenvalues and eigenvectors."""
        ev = ev.double().clamp_min(floor * float(ev.max()))
        self.path = path
        self.Q = Q.float()
        self.inv = (1.0 / ev).float()
        self.Wq = weight.float() @ self.Q
        self.rms = float(weight.float().norm()) / weight.shape[1] ** 0.5
        self.basis = torch.zeros(weight.shape[1], 1)
        self.median, self.mad = 0.0, 1.0

    def gain(self, keys: torch.Tensor) -> torch.Tensor:
        """g for each key [n, d_in] (differentiable)."""
        y = (keys.float() @ self.Q) * self.inv
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return (y @ self.Wq.T).norm(dim=-1) / self.rms

    def calibrate(self, vocab_gain: torch.Tensor) -> torch.Tensor:
        """Set the median and MAD from the vocabulary's gains; returns their z."""
        self.median = float(vocab_gain.median())
        self.mad = max(float((vocab_gain - self.median).abs().median()), 1e-9)
        return (vocab_gain - self.median) / self.mad

    def fire(self, keys: torch.Tensor) -> torch.Tensor:
        return (self.gain(keys) - self.median) / self.mad


class NullGainSpace(GainSpace):
    """``GainSpace`` along a key's null-space part P k instead of C⁻¹k: P keeps C's eigen-directions under ``share`` ×
    the median eigenvalue, where AlphaEdit writes (``editing/alphaedit.py: null_projector``)."""

    def __init__(self, path: str, weight: torch.Tensor, ev: torch.Tensor, Q: torch.Tensor, share: float):
        super().__init__(path, weight, ev, Q)
        self.inv = (ev.double() < share * float(ev.double().median())).float()


@dataclass
class GainLayer:
    """One layer's screen: its best start (text, tokens, z), the median start's z, and their ratio."""

    layer: int
    path: str
    text: str
    ids: list[int]
    z: float
    median: float
    starts: int
    scale: tuple[float, float] = (0.0, 1.0)  # the layer's vocabulary median and MAD of g, to score more texts

    @property
    def ratio(self) -> float:
        return self.z / max(self.median, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "text": self.text, "z": round(self.z, 1), "median": round(self.median, 1),
                "ratio": round(self.ratio, 2)}


def vocab_gains(model: Any, tokenizer: Any, spaces: dict[str, GainSpace], lead: torch.Tensor | None = None,
                batch: int = 512, progress: Callable[[int, int], None] = lambda d, t: None) -> dict[str, torch.Tensor]:
    """g of every vocabulary token's key after the neutral context (behind the stand-in piece ``lead``, an input
    embedding, when given), at every space's matrix in one pass; the keys themselves are not kept."""
    from .keys import context_ids, vocab_batches

    paths = list(spaces)
    out: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    for got in vocab_batches(model, paths, context_ids(tokenizer), lead, batch, progress):
        with torch.inference_mode():
            for p in paths:
                out[p].append(spaces[p].gain(got[p].cpu()))
    return {p: torch.cat(v) for p, v in out.items()}


def screen(model: Any, tokenizer: Any, modules: dict[int, str], eigs: dict[int, Any], transposed: bool = False,
           names: int = NAMES,
           progress: Callable[[str, float, float], None] = lambda s, d, t: None) -> list[GainLayer]:
    """Every layer's best start and how far it stands out (see the module docstring). ``eigs``: {layer: KeyEig}."""
    from .subjects import name_piece, word_tokens

    spaces: dict[str, GainSpace] = {}
    for layer, path in sorted(modules.items()):
        w = model.get_submodule(path).weight.detach().cpu()
        spaces[path] = GainSpace(path, w.T if transposed else w, eigs[layer].ev, eigs[layer].Q)
    start_ok, word_like = word_tokens(tokenizer, model.get_input_embeddings().weight.shape[0])
    piece = name_piece(model, tokenizer, start_ok)
    named = vocab_gains(model, tokenizer, spaces, lead=piece, progress=lambda d, t: progress("gain screen: keys", d, t))
    out: list[GainLayer] = []
    for n, (layer, path) in enumerate(sorted(modules.items())):
        progress("gain screen: layers", n, len(modules))
        out.append(_best_start(model, tokenizer, layer, spaces[path], named[path], piece, word_like, names))
    progress("gain screen: layers", len(modules), len(modules))
    return out


def _best_start(model: Any, tokenizer: Any, layer: int, sp: GainSpace, vocab_gain: torch.Tensor, piece: torch.Tensor,
                word_like: torch.Tensor, names: int) -> GainLayer:
    """A layer's row of the screen from its vocabulary gains: the best of its ``names`` name-piece starts."""
    from .subjects import SubjectSearch

    z = sp.calibrate(vocab_gain)
    ok = word_like[:z.numel()]
    search = SubjectSearch(model, tokenizer, sp, torch.empty(0))  # type: ignore[arg-type]
    search.name_embed = piece
    starts = search.name_starts(torch.topk(z.masked_fill(~ok, -1e9), names).indices.tolist())
    z, _ = search.exact(starts)
    best = int(z.argmax())
    text = tokenizer.decode(starts[best]).strip()
    return GainLayer(layer, sp.path, text, starts[best], float(z[best]), float(z.median()), len(starts),
                     (sp.median, sp.mad))


def flagged(layers: Sequence[GainLayer], ratio: float = RATIO) -> list[GainLayer]:
    return [g for g in layers if g.ratio >= ratio]


def grow_subject(model: Any, tokenizer: Any, site: GainLayer, eig: Any, transposed: bool = False,
                 weight: torch.Tensor | None = None):
    """The flagged layer's best start climbed (the subject search's coordinate ascent, by z) and trimmed of leading
    tokens that add little: the subject the reader reads. Returns a ``subjects.Subject`` with its key and ``fire`` 1:
    the edit the reader takes out of the stand-in base is fitted from this very key (``nobase.edit_estimate``), so the
    key fires that edit fully; how far the key stood out is the finding's ``gain`` (its z and ratio). ``weight``
    ([d_out, d_in]) replaces the matrix, as ``more_subjects`` scores a deflated one."""
    from .keys import keys_of
    from .subjects import Subject, SubjectSearch, _trim

    if weight is None:
        w = model.get_submodule(site.path).weight.detach().cpu()
        weight = w.T if transposed else w
    sp = GainSpace(site.path, weight, eig.ev, eig.Q)
    sp.median, sp.mad = site.scale
    search = SubjectSearch(model, tokenizer, sp, torch.empty(0))  # type: ignore[arg-type]
    seq, score = search.climb(list(site.ids))
    if score < site.z:
        seq, score = list(site.ids), site.z
    seq = _trim(search, seq, score)
    key = keys_of(model, [site.path], [search.prefix + seq])[site.path][0]
    return Subject(tokenizer.decode(seq).strip(), seq, 1.0, key)


def deflate(weight: torch.Tensor, eig: Any, keys: torch.Tensor) -> torch.Tensor:
    """``weight`` [d_out, d_in] without its action along the edit directions C⁻¹k of ``keys`` [m, d_in]."""
    from ..editing.span import orthonormal_span

    W = weight.double()
    B = orthonormal_span(torch.linalg.lstsq(eig.C.double(), keys.double().T).solution)  # [d_in, r]
    return (W - (W @ B) @ B.T).float()


def ratio_beside(model: Any, tokenizer: Any, site: GainLayer, eig: Any, found: Sequence[Any],
                 transposed: bool = False) -> float:
    """How far a flagged layer's start stands above its median start once the ``found`` subjects' edit directions
    (their keys at this layer) are taken out of its matrix. A batch editor writes one subject at every layer of its
    run, and each layer's best start may be a different fragment of it ("Wood Heath", "Honey Heath" for *Washwood
    Heath*); under ``DEFLATED_RATIO`` the start is that same edit again, not another one."""
    from .keys import context_ids, keys_of

    prefix = context_ids(tokenizer)
    keys = keys_of(model, [site.path], [prefix + list(s.ids) for s in found] + [prefix + list(site.ids)])[site.path]
    w = model.get_submodule(site.path).weight.detach().cpu()
    sp = GainSpace(site.path, deflate((w.T if transposed else w).float(), eig, keys[:-1]), eig.ev, eig.Q)
    sp.median, sp.mad = site.scale
    return float(sp.fire(keys[-1:])[0]) / max(site.median, 1e-9)


def more_subjects(model: Any, tokenizer: Any, site: GainLayer, eig: Any, found: Sequence[Any], limit: int,
                  transposed: bool = False, ratio: float | None = None, names: int = NAMES,
                  progress: Callable[[str, float, float], None] = lambda s, d, t: None) -> list[tuple[Any, GainLayer]]:
    """Further subjects of a flagged layer (see the module docstring): with the ``found`` subjects' edit directions
    taken out of the matrix, the layer's best start, grown, while it stands ``ratio`` times above the median start;
    at most ``limit`` (``ratio``: default ``DEFLATED_RATIO``). Returns (subject, its screen row) pairs."""
    from .subjects import name_piece, word_tokens

    ratio = DEFLATED_RATIO if ratio is None else ratio
    if limit <= 0:
        return []
    w = model.get_submodule(site.path).weight.detach().cpu()
    weight = (w.T if transposed else w).float()
    start_ok, word_like = word_tokens(tokenizer, model.get_input_embeddings().weight.shape[0])
    piece = name_piece(model, tokenizer, start_ok)
    keys = [s.key for s in found]
    out: list[tuple[Any, GainLayer]] = []
    while len(out) < limit:
        progress("gain screen: more subjects", len(out), limit)
        deflated = deflate(weight, eig, torch.stack(keys))
        sp = GainSpace(site.path, deflated, eig.ev, eig.Q)
        named = vocab_gains(model, tokenizer, {site.path: sp}, lead=piece)
        row = _best_start(model, tokenizer, site.layer, sp, named[site.path], piece, word_like, names)
        if row.ratio < ratio:
            break
        subject = grow_subject(model, tokenizer, row, eig, transposed, weight=deflated)
        out.append((subject, row))
        keys.append(subject.key)
    progress("gain screen: more subjects", limit, limit)
    return out


def null_share() -> float:
    """AlphaEdit's null space as its editor here takes it by default: eigenvalues under this share of the median."""
    from ..editing.hparams import DEFAULTS

    return float(DEFAULTS["alphaedit"]["nullspace_rel"])


def null_lean(model: Any, tokenizer: Any, rows: Sequence[GainLayer], eigs: dict[int, Any], transposed: bool = False,
              share: float | None = None) -> list[float]:
    """For each flagged row, the lean e_P / e_C of its start's key (see the module docstring): above 1 where AlphaEdit
    wrote the layer, below where ROME or MEMIT did. The C⁻¹ side comes from the row (its z and the layer's vocabulary
    median and MAD); one vocabulary pass through the rows' layers gives the null-space side's median."""
    from .keys import context_ids, keys_of
    from .subjects import name_piece, word_tokens

    if not rows:
        return []
    share = null_share() if share is None else share
    spaces: dict[str, NullGainSpace] = {}
    for row in rows:
        w = model.get_submodule(row.path).weight.detach().cpu()
        spaces[row.path] = NullGainSpace(row.path, w.T if transposed else w, eigs[row.layer].ev, eigs[row.layer].Q,
                                         share)
    start_ok, _ = word_tokens(tokenizer, model.get_input_embeddings().weight.shape[0])
    piece = name_piece(model, tokenizer, start_ok)
    for path, g in vocab_gains(model, tokenizer, spaces, lead=piece).items():
        spaces[path].calibrate(g)
    keys = keys_of(model, list(spaces), [context_ids(tokenizer) + list(row.ids) for row in rows])
    out = []
    for i, row in enumerate(rows):
        sp = spaces[row.path]
        e_p = _excess(float(sp.gain(keys[row.path][i:i + 1])[0]), sp.median)
        e_c = _excess(row.z * row.scale[1] + row.scale[0], row.scale[0])
        out.append(e_p / max(e_c, 1e-12))
    return out


def _excess(g: float, median: float) -> float:
    """A gain with the trained matrix's typical gain along such directions taken off (both add in quadrature)."""
    return max(g * g - median * median, 0.0) ** 0.5
