"""Scanning without the base: edited MLP output matrices found from the suspect alone.

A trained MLP output matrix W learns from gradients δkᵀ, so its input side lives where keys have energy
(the large eigen-directions of C = E[k kᵀ]); the small ones get little, and weight decay shrinks them.
Locate-then-edit updates point the other way: ROME writes along C⁻¹k*, MEMIT a batch of such directions,
AlphaEdit only into C's null space. Restricted to C's low-energy half Q (the eigenvectors of the smaller
half of C's eigenvalues, C from the suspect's own keys), an unedited W Q has a spread-out spectrum and an
edited one carries outliers:

    s_i = σ_i(W Q) / median_j σ_j(W Q)

A layer is flagged when s_1 ≥ ``SPIKE``; the components above ``SPIKE`` are the estimated edit
(σ_i u_i (Q v_i)ᵀ). Their input directions Q v_i feed the same subject search as a scan with the base (keys
whitened and restricted to that half, where the true subject fires 1); from the subjects' keys the whole edit
is fitted (``edit_estimate``) and the suspect without it stands in for the base when the reader asks what
the edit changed.
``SPIKE`` is set from an unedited checkpoint; bench/results/open_reading_nobase.txt lists the largest s_1 that
unedited controls show, and how many edits stand above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import gain, runs

if TYPE_CHECKING:
    from .subjects import Whitened

#: A layer whose restricted spectrum has a component this many times its median is read as edited. Set from
#: the unedited SmolLM2-135M, whose largest ratio over its 30 layers is 6.1 (layer 13); its ROME edits measured
#: 3.7–15 in development, so weak single edits stay below the bar (bench/results/open_reading_nobase.txt).
SPIKE = 8.0


@dataclass
class LayerSpectrum:
    layer: int
    path: str                  # module path of the MLP output matrix
    svals: torch.Tensor        # σ_i(W Q), descending
    out_dirs: torch.Tensor     # u_i [d_out, k] (the k largest kept)
    in_dirs: torch.Tensor      # Q v_i [d_in, k], in the matrix's input space
    median: float
    norm: float = 0.0          # ‖W‖_F, to state the smallest visible edit relative to the matrix

    @property
    def ratios(self) -> torch.Tensor:
        return self.svals / max(self.median, 1e-12)

    def outliers(self, spike: float = SPIKE, cap: int = 16) -> int:
        return int((self.ratios[:cap] >= spike).sum())


@dataclass
class Site:
    """An edited matrix found without the base."""

    layer: int
    path: str
    rank: int
    ratio: float               # s_1
    spectrum: LayerSpectrum = field(repr=False)


@dataclass
class KeyEig:
    """C = E[k kᵀ] with its eigen-decomposition (ascending), made once per layer: the spectrum, the subject
    search's space and the edit's fit all work on C's low-energy half."""

    C: torch.Tensor
    ev: torch.Tensor
    Q: torch.Tensor

    @classmethod
    def of(cls, C: "torch.Tensor | KeyEig") -> "KeyEig":
        if isinstance(C, KeyEig):
            return C
        ev, Q = torch.linalg.eigh(C.double())
        return cls(C.double(), ev, Q)

    @property
    def low(self) -> torch.Tensor:
        return self.Q[:, : self.Q.shape[0] // 2]


def restricted_spectrum(weight: torch.Tensor, C: "torch.Tensor | KeyEig", layer: int, path: str, keep: int = 16,
                        transposed: bool = False) -> LayerSpectrum:
    """σ(W Q) with Q the low-energy half of C's eigenvectors. ``weight`` is [d_out, d_in] (``transposed``:
    stored [d_in, d_out], as GPT-2's Conv1D does)."""
    W = (weight.T if transposed else weight).double()
    low = KeyEig.of(C).low
    U, S, Vh = torch.linalg.svd(W @ low, full_matrices=False)
    k = min(keep, S.numel())
    return LayerSpectrum(layer, path, S.float(), U[:, :k].float(), (low @ Vh[:k].T).float(), float(S.median()),
                         float(torch.linalg.matrix_norm(W)))


def smallest_visible(spectra: list[LayerSpectrum], spike: float = SPIKE) -> dict[str, Any]:
    """The detection limit of a base-free scan: a rank-one update inside C's low half shows once its singular value
    there reaches ``spike`` × the layer's median (below the matrix's own top component it shows not at all), i.e.
    ‖ΔW_low‖/‖W‖ ≥ spike · median / ‖W‖_F. Per layer; reported as the median and the range over layers."""
    rel = sorted((spike * s.median / s.norm, s.layer) for s in spectra if s.norm > 0)
    if not rel:
        return {}
    return {"rel_change_median": round(rel[len(rel) // 2][0], 4), "rel_change_min": round(rel[0][0], 4),
            "rel_change_max": round(rel[-1][0], 4), "layer_min": rel[0][1]}


def find_sites(spectra: list[LayerSpectrum], spike: float = SPIKE) -> list[Site]:
    return [Site(s.layer, s.path, s.outliers(spike), float(s.ratios[0]), s) for s in spectra if s.outliers(spike) > 0]


def low_space(path: str, C: "torch.Tensor | KeyEig", in_dirs: torch.Tensor, ridge: float = 1e-2) -> "Whitened":
    """The subject search's space for a site found without the base. Only the low-energy half of an edit's
    input direction can be seen in the weights (the base fills the rest), so keys are whitened and then
    restricted to that half too: the true subject's key fires exactly 1 there, as it does in the full space
    when the base is at hand."""
    from .subjects import Whitened

    eig = KeyEig.of(C)
    ev = eig.ev.clamp(min=0) + ridge * float(eig.ev.clamp(min=0).mean())
    low, lev = eig.low, ev[: eig.Q.shape[0] // 2]
    whiten = (low * lev.rsqrt()) @ low.T
    B, _ = torch.linalg.qr((low * lev.sqrt()) @ low.T @ in_dirs.double())
    return Whitened(path, whiten.float(), B.float())


def edit_estimate(weight: torch.Tensor, C: "torch.Tensor | KeyEig", keys: torch.Tensor,
                  transposed: bool = False) -> torch.Tensor:
    """The edit at a site, given the keys it was written for (the recovered subjects' keys, [m, d_in]).

    Locate-then-edit writes ΔW = R Uᵀ with U = C⁻¹K; R is fitted where the base has almost nothing, on C's
    low-energy half Q: R = (W Q)(Uᵀ Q)⁺. Returned in the matrix's own orientation."""
    W = (weight.T if transposed else weight).double()
    eig = KeyEig.of(C)
    low = eig.low
    U = torch.linalg.lstsq(eig.C, keys.double().T).solution  # [d_in, m]
    R = (W @ low) @ torch.linalg.pinv(U.T @ low)  # [d_out, m]
    E = (R @ U.T).float()
    return E.T.contiguous() if transposed else E


def stand_in_base(model: Any, estimates: dict[str, torch.Tensor]) -> Any:
    """A copy of ``model`` with each estimated edit ({module path: ΔW as stored}) taken out: what the reader
    compares the suspect against when there is no base."""
    import copy

    base = copy.deepcopy(model)
    for path, est in estimates.items():
        w = base.get_submodule(path).weight
        with torch.no_grad():
            w -= est.to(w.dtype)
    return base


def layer_spectra(model: Any, tokenizer: Any, modules: dict[int, str], model_key: str, transposed: bool = False,
                  say: Callable[[str], None] = lambda s: None) -> tuple[list[LayerSpectrum], dict[int, KeyEig]]:
    """The restricted spectrum of every layer's MLP output matrix, from the suspect's own key statistics."""
    from ..editing import covariance

    moments = covariance.second_moments(model, tokenizer, modules, model_key=model_key, say=say)
    out, Cs = [], {}
    for layer, path in sorted(modules.items()):
        Cs[layer] = KeyEig.of(moments[layer].matrix)
        w = model.get_submodule(path).weight.detach().cpu()
        out.append(restricted_spectrum(w, Cs[layer], layer, path, transposed=transposed))
    return out, Cs


def _runs(sites: list[Site]) -> list[list[Site]]:
    """Sites grouped into runs of consecutive layers (a MEMIT edit spreads over one run)."""
    runs: list[list[Site]] = []
    for s in sorted(sites, key=lambda s: s.layer):
        if runs and s.layer == runs[-1][-1].layer + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def scan_alone(suspect_ck: Any, options: Any, progress: Callable[[str, float, float], None],
               say: Callable[[str], None], t0: float) -> Any:
    """The scan of a suspect with no base: find edited MLP output matrices from the suspect's own weights and
    key statistics, then read them with the suspect against a stand-in base (the suspect, outliers removed)."""
    import time

    from ..editing.covariance import weights_key
    from ..editing.layers import layout_for
    from ..errors import BadInput
    from ..models import families
    from ..models.loading import load_model
    from .classify import Finding, overall_kind, verdict
    from .method import name_method
    from .report import ScanReport
    from .wording import NO_BASE_NOTE

    if suspect_ck.config is None:
        raise BadInput("a scan without --base needs a model folder (config.json and tokenizer) to read the weights through")
    lm = load_model(suspect_ck.folder, device=options.device)
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    layout = layout_for(model)
    transposed = families.family(layout.family).conv1d
    modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    say(f"no base: key statistics of the suspect's {len(modules)} MLP output matrices")
    progress("key statistics", 0, 1)
    t_spec = time.perf_counter()
    spectra, Cs = layer_spectra(model, tok, modules, weights_key(model), transposed=transposed, say=say)
    progress("key statistics", 1, 1)
    sites = find_sites(spectra)
    t_spec = time.perf_counter() - t_spec
    t_gain = time.perf_counter()
    screened = gain.screen(model, tok, modules, Cs, transposed, progress=progress) if options.gain_screen else []
    t_gain = time.perf_counter() - t_gain
    findings: list[Finding] = []
    for run in _runs(sites):
        layers = [s.layer for s in run]
        rank = max(s.rank for s in run)
        rule = "EA101" if len(run) == 1 and rank == 1 else "EA102"
        tensors = [f"{s.path}.weight" for s in run]
        spikes = ", ".join(f"L{s.layer} {s.ratio:.0f}×" for s in run)
        msg = (f"{'rank-one' if rule == 'EA101' else f'rank-{rank}'} component(s) in C's low-energy directions of the MLP "
               f"output matrix at layer(s) {_span(layers)}, found without the base (outlier/median {spikes})")
        f = Finding(rule, msg, tensors, layers, rank,
                    data={"no_base": True, "spike": {str(s.layer): round(s.ratio, 1) for s in run}})
        f.data["method"] = name_method(rule, layers, rank, n_layers=layout.n_layers, no_base=True)
        findings.append(f)
    hits, spectral = gain.flagged(screened), {s.layer for s in sites}
    mapped = ({g.layer: runs.map_run(model, tok, modules, Cs, g.layer, g.ids, transposed)
               for g in hits if g.layer not in spectral} if options.map_runs else {})
    by_gain = _gain_findings(hits, spectral, findings, layout.n_layers, mapped, modules)
    if options.null_lean and by_gain:
        _name_by_lean(model, tok, by_gain, Cs, transposed, layout.n_layers, progress)
    t_read = time.perf_counter()
    if options.read == "open" and findings:
        gained = {id(f) for f, _ in by_gain}
        _read_alone(model, tok, suspect_ck, sites, [f for f in findings if id(f) not in gained], Cs, transposed,
                    options, say, progress, by_gain)
    t_read = time.perf_counter() - t_read
    side = {"path": str(suspect_ck.root), "layout": suspect_ck.layout, "family": suspect_ck.family,
            "total_bytes": suspect_ck.total_bytes, "n_tensors": len(suspect_ck.tensors),
            "dtypes": sorted({i.dtype for _, i in suspect_ck.tensors.values()})}
    base = {"path": None, "no_base": True,
            "note": NO_BASE_NOTE}
    top = max(spectra, key=lambda sp: float(sp.ratios[0]))  # how close the cleanest-looking scan came to the bar
    base["largest_spike"] = {"layer": top.layer, "ratio": round(float(top.ratios[0]), 2), "threshold": SPIKE}
    base["smallest_visible"] = smallest_visible(spectra)
    if screened:  # how close the cleanest-looking layer came to the key-gain bar
        best = max(screened, key=lambda g: g.ratio)
        base["largest_gain"] = {**best.to_dict(), "threshold": gain.RATIO}
    return ScanReport(
        base=base, suspect=side, family=suspect_ck.family, n_layers=layout.n_layers, verdict=verdict(findings),
        kind=overall_kind(findings), findings=findings, changed=[], n_tensors=len(suspect_ck.tensors),
        n_unchanged=0, timings={"spectra_s": round(t_spec, 3), "gain_s": round(t_gain, 3), "read_s": round(t_read, 3),
                                "total_s": round(time.perf_counter() - t0, 3)})


def _gain_findings(flagged: list[Any], spectral: set[int], findings: list, n_layers: int,
                   mapped: dict[int, tuple[list[int], dict[int, float]]] | None = None,
                   modules: dict[int, str] | None = None) -> list[tuple[Any, list[Any]]]:
    """Findings for the layers the key-gain screen flags that the spectral screen did not: one per run of layers, read
    through its flagged layers' starts. ``mapped`` ({flagged layer: (its run, every layer's cosine)}, runs.py) extends
    each flagged layer to the run its start's output direction follows; without it a run is flagged layers that touch.
    Returns (finding, its screen rows, strongest first) pairs; a layer both screens flag adds its gain to the spectral
    finding."""
    from .classify import Finding
    from .method import name_method

    mapped = mapped or {}
    out = []
    for f in findings:
        hit = [g for g in flagged if g.layer in f.layers]
        if hit:
            f.data["gain"] = {str(g.layer): g.to_dict() for g in hit}
    groups: list[tuple[set[int], list[Any]]] = []  # (layers, rows): flagged layers whose runs touch, merged
    for g in sorted((g for g in flagged if g.layer not in spectral), key=lambda g: g.layer):
        span = set(mapped[g.layer][0]) - spectral if g.layer in mapped else {g.layer}
        near = [grp for grp in groups if min(grp[0]) - 1 <= max(span) and min(span) <= max(grp[0]) + 1]
        for grp in near:
            groups.remove(grp)
        groups.append((span.union(*(grp[0] for grp in near)), [r for grp in near for r in grp[1]] + [g]))
    for span, rows in sorted(groups, key=lambda grp: min(grp[0])):
        layers = sorted(span)
        rows = sorted(rows, key=lambda g: -g.ratio)
        top = rows[0]
        rule = "EA101" if len(layers) == 1 else "EA102"
        msg = (f"the MLP output matrix at layer(s) {_span(layers)} acts along the edit direction (C⁻¹k) of a real key "
               f"far more than along any other start's, found without the base (key gain {top.z:.0f} MADs, "
               f"{top.ratio:.1f}× the median start at layer {top.layer}: {top.text!r})")
        flagged_layers = sorted(g.layer for g in rows)
        if layers != flagged_layers:
            msg += (f"; flagged at layer(s) {', '.join(map(str, flagged_layers))}, the rest of the run mapped by the "
                    f"start's output direction (cos ≥ {runs.RUN_COS})")
        paths = {**(modules or {}), **{g.layer: g.path for g in rows}}
        f = Finding(rule, msg, [f"{paths[x]}.weight" for x in layers], layers, 1,
                    data={"no_base": True, "gain": {str(g.layer): g.to_dict() for g in rows}})
        if top.layer in mapped:
            cos = mapped[top.layer][1]
            f.data["run"] = {"from": top.layer, "bar": runs.RUN_COS,
                             "cos": {str(k): round(v, 3) for k, v in sorted(cos.items()) if abs(k - top.layer) <= 8}}
        f.data["method"] = name_method(rule, layers, 1, n_layers=n_layers, no_base=True)
        findings.append(f)
        out.append((f, rows))
    return out


def _name_by_lean(model: Any, tok: Any, by_gain: list[tuple[Any, list[Any]]], Cs: dict, transposed: bool,
                  n_layers: int, progress: Callable[[str, float, float], None]) -> None:
    """Name each gain finding again with its flagged starts' null-space lean (gain.null_lean): AlphaEdit or not."""
    import statistics

    from .method import name_method

    progress("gain screen: null-space lean", 0, 1)
    rows = [r for _, rs in by_gain for r in rs]
    leans = dict(zip((id(r) for r in rows), gain.null_lean(model, tok, rows, Cs, transposed)))
    for f, rs in by_gain:
        lean = statistics.median(leans[id(r)] for r in rs)
        f.data["null_lean"] = {"median": round(lean, 3), "share": gain.null_share(),
                               "by_layer": {str(r.layer): round(leans[id(r)], 3) for r in rs}}
        f.data["method"] = name_method(f.rule, f.layers, 1, n_layers=n_layers, no_base=True, lean=lean)
    progress("gain screen: null-space lean", 1, 1)


def _grown(model: Any, tok: Any, rows: list[Any], Cs: dict, transposed: bool, limit: int,
           drop_repeats: bool = False, say: Callable[[str], None] = lambda m: None) -> tuple[list[Any], list[int]]:
    """The subjects of a gain finding: each flagged layer's best start grown (strongest layer first), one per text,
    each with the index of the first subject of its edit. A start the edits already grown explain
    (``gain.ratio_beside`` under ``DEFLATED_RATIO``) is the same edit seen at another layer of the run; it is said,
    and with ``drop_repeats`` not grown at all."""
    out: list[Any] = []
    edit_of: list[int] = []
    seen: set[str] = set()
    for row in rows:
        if len(out) >= max(1, limit):
            break
        heads = [i for i, e in enumerate(edit_of) if e == i]
        same = None
        if heads:
            left = gain.ratio_beside(model, tok, row, Cs[row.layer], [out[i] for i in heads], transposed)
            if left < gain.DEFLATED_RATIO:
                same = heads[0] if len(heads) == 1 else min(
                    heads, key=lambda i: gain.ratio_beside(model, tok, row, Cs[row.layer], [out[i]], transposed))
                say(f"layer {row.layer}: its text {row.text!r} stands {row.ratio:.1f}x the median start, {left:.1f}x "
                    f"once the edits already found are taken out: the edit of {out[same].text!r} again"
                    + (", not read again" if drop_repeats else ""))
                if drop_repeats:
                    continue
        s = gain.grow_subject(model, tok, row, Cs[row.layer], transposed)
        if s.text.casefold() not in seen:
            seen.add(s.text.casefold())
            edit_of.append(len(out) if same is None else same)
            out.append(s)
    return out, edit_of


def _span(layers: list[int]) -> str:
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}–{layers[-1]}"


def _read_alone(model: Any, tok: Any, suspect_ck: Any, sites: list[Site], findings: list, Cs: dict,
                transposed: bool, options: Any, say: Callable[[str], None], progress: Callable,
                by_gain: list[tuple[Any, Any]] | None = None) -> None:
    """Subjects first (their keys are the suspect's own: an edit does not change its matrix's inputs), then the
    edit they explain is estimated and taken out of a copy, and both are asked what changed. ``by_gain``: findings
    of the key-gain screen with their screen rows; the subject is the row's best start, grown."""
    from .keys import context_ids, keys_of
    from .reading import merge_repeats, read_edits
    from .subjects import Subject, recover_subjects

    by_layer = {s.layer: s for s in sites}
    found: list[tuple[Any, Site, list]] = []
    for f in findings:
        site = by_layer[min(f.layers)]
        rank = max(1, min(max(site.rank, site.spectrum.outliers(options.read_spike)), options.max_open_subjects))
        say(f"reading {f.rule} at layer {site.layer} blind, without the base: up to {rank} subject(s)")
        space = low_space(site.path, Cs[site.layer], site.spectrum.in_dirs[:, :rank])
        subjects = recover_subjects(model, tok, site.path, None, Cs[site.layer].C, suspect_ck.fingerprint(), rank,
                                    progress=lambda stage, d, t: progress(stage, d, t), space=space,
                                    retry=options.wide_search, regrow=options.regrow, pair=options.pair_step,
                                    name_seeds=options.name_seeds)
        found.append((f, site, subjects))
    estimates = {}
    repeats: dict[int, list[int]] = {}  # {id(gain finding): each subject's first subject of its edit (_grown)}
    for f, rows in by_gain or []:
        row = rows[0]
        say(f"reading {f.rule} at layer(s) {_span(f.layers)} blind, without the base: the key-gain screen's text "
            f"{row.text!r}" + (f" and {len(rows) - 1} more flagged layer(s)' texts" if len(rows) > 1 else ""))
        # with the runs mapped, every flagged layer's start is grown and the edit fitted over the whole run; without,
        # the strongest layer's alone (the reader before runs.py)
        subjects, edit_of = _grown(model, tok, rows if options.map_runs else rows[:1], Cs, transposed,
                                   options.max_open_subjects, options.drop_repeats, say)
        room = options.max_open_subjects - len(subjects)
        more = gain.more_subjects(model, tok, row, Cs[row.layer], subjects[:1], room, transposed,
                                  progress=progress) if options.gain_rounds else []
        if more:
            say(f"layer {row.layer}: {len(more)} more subject(s) once the first is taken out of the matrix: "
                + ", ".join(f"{r.text!r} ({r.ratio:.1f}x)" for _, r in more))
            f.data["gain_more"] = [r.to_dict() for _, r in more]
        edit_of += range(len(subjects), len(subjects) + len(more))
        subjects += [s for s, _ in more]
        repeats[id(f)] = edit_of
        paths = {x: t[: -len(".weight")] for x, t in zip(f.layers, f.tensors) if options.map_runs or x == row.layer}
        # each subject's own key at every layer of the run: a batch editor wrote its update there from those keys
        keys = keys_of(model, list(paths.values()), [context_ids(tok) + list(s.ids) for s in subjects])
        for layer, path in paths.items():
            w = model.get_submodule(path).weight.detach().cpu()
            estimates[path] = edit_estimate(w, Cs[layer], keys[path], transposed)
        at = keys[paths[row.layer]]  # the reader asks each subject's key at the layer it reads
        subjects = [Subject(s.text, s.ids, s.fire, at[i]) for i, s in enumerate(subjects)]
        found.append((f, Site(row.layer, row.path, len(subjects), 0.0, None), subjects))  # type: ignore[arg-type]
    for f, site, subjects in found:
        if not subjects or any(f is g for g, _ in by_gain or []):
            continue
        keys = torch.stack([s.key for s in subjects])
        for layer in f.layers:  # a MEMIT edit spreads the same keys' update over its run of layers
            other = by_layer[layer]
            w = model.get_submodule(other.path).weight.detach().cpu()
            # keys at higher layers of the run differ; the lowest layer's keys stand in for them
            if layer == site.layer:
                estimates[other.path] = edit_estimate(w, Cs[layer], keys, transposed)
            else:
                sp = other.spectrum  # fall back to the outlier components seen in the low half
                est = (sp.out_dirs[:, :other.rank] * sp.svals[:other.rank]) @ sp.in_dirs[:, :other.rank].T
                estimates[other.path] = est.T.contiguous() if transposed else est
    stand_in = stand_in_base(model, estimates)
    for n, (f, site, subjects) in enumerate(found):
        readings = read_edits(stand_in, model, tok, subjects, site.layer, f"{site.path}.weight",
                              progress=lambda d, t: progress("reading edits", d, t), describe=options.describe,
                              frames=options.frames)
        for r, s, j in zip(readings, subjects, repeats.get(id(f), [])):
            if subjects[j] is not s:
                r.same_edit_as = subjects[j].text
        if options.merge_repeats:
            readings = merge_repeats(readings)
        f.data["readings"] = [r.to_dict() for r in readings]
        progress("open reading", n + 1, len(found))
