"""``run_scan``: the whole audit of a suspect checkpoint against its base, as one service call.

Used by the CLI (``editaudit scan``), the app and the demo. Stages: open and validate both sides →
check they are comparable → byte-compare tensor by tensor → spectral statistics of changed
tensors only → classify → read the edits (promoted tokens, candidate subjects) → store and report.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..checkpoint import open_checkpoint
from ..checkpoint.reader import TensorFile, to_torch
from ..errors import BadInput
from ..probing.format import Probe
from ..progress import Progress as Events
from ..progress import ignore, stage_steps
from .classify import EDIT_RULES, Changed, Finding, classify, overall_kind, verdict
from .compare import compare, require_compatible
from .method import name_method, occupied_share
from .names import num_layers, parse_name
from .readout import edit_output, load_lens, output_input_sides, promoted_tokens, read_through_model, subject_keys
from .report import ScanReport
from .spectral import delta_stats

if TYPE_CHECKING:
    import torch

Progress = Callable[[str, float, float], None]  # (stage, done, total) inside; callers get typed events


@dataclass
class ScanOptions:
    facts: list[Probe] = field(default_factory=list)  # candidate subjects for key alignment
    use_cache: bool = True  # reuse / record the base's per-tensor digests in the store
    follow_symlinks: bool = False
    top_tokens: int = 10
    top_subjects: int = 10
    read_edits: bool = True
    read: str = "open"  # off: no reading through the model; list: rank ``facts`` only; open: recover subjects blind
    max_open_subjects: int = 12  # per edited matrix (a batch edit of more facts is read up to this many)
    wide_search: bool = True  # open reading: a search round that finds nothing tries RETRY_SEEDS seeds before giving up
    pair_step: bool = False  # open reading: a round both tries leave empty tries the pair step on after-piece seeds
    name_seeds: str = "retry"  # open reading, off | retry | every: half the seeds of a round's second try (retry) or
    # of every try are names' last pieces read behind a stand-in first piece (subjects.name_piece); v11-plan.md:
    # "every" (fifth use) objects 27 -> 24 of 35, not kept; "retry" (sixth use) 17 -> 23, false 4 -> 5: the default
    regrow: bool = False  # open reading: regrow each found subject backwards over the whole vocabulary
    read_spike: float = 8.0  # no base: a flagged layer is read for as many subjects as components ≥ this × median
    gain_screen: bool = True  # no base: also screen every layer by its gain on real keys' edit directions (gain.py);
    # on by default since its record (bench/heldout/v13-plan.md fourth use: 5 of 5 single ROME layers, 0 findings on
    # three unedited controls)
    gain_rounds: bool = False  # no base: in a layer the gain screen flags, take each subject found out of the matrix
    # and look again (gain.more_subjects: several edits in one matrix); off since its record read no more edits
    # (bench/heldout/v13-plan.md ninth use: 2 of 20, one per suspect)
    map_runs: bool = True  # no base: a layer the gain screen flags is extended to the run of layers its start's
    # output direction follows (runs.py: a MEMIT or AlphaEdit batch), every flagged layer's start is read, and the edit
    # is fitted over the run. Its first record found no layer the screen had not flagged (v13-plan.md tenth use); on
    # since the eleventh use, where the base-free erase of the batches it mapped erased 11 edits of 20 against 8
    drop_repeats: bool = True  # no base, runs mapped: a flagged layer's start that no longer stands out once the
    # subjects already grown are taken out of its matrix is the same edit seen at another layer; not grown again
    merge_repeats: bool = True  # no base: the readings of one edit found at several layers of a run become one, the
    # answer most of them give (reading.merge_repeats; only where drop_repeats is off). Both on since their record
    # (bench/heldout/v14-plan.md first use: objects 2 of 50 in every arm, false edit readings 2 of 6 -> 1 of 3)
    null_lean: bool = True  # no base: name a gain finding AlphaEdit when its flagged starts' update gains more along
    # the keys' null-space part than along C⁻¹k (gain.null_lean), else ROME or MEMIT; one vocabulary pass through the
    # flagged layers. On since v13-plan.md eleventh use (AlphaEdit told right 4 of 4 against 2 of 4)
    keys: bool = False  # open reading: also read each edit through its key at a stand-in subject (inject.py; opt-in,
    # v7-plan.md sixth use: +1 object of 35, short of the +2 the rule asked)
    amplify: str = "off"  # open reading, off | memit | all: subjects read with the edit scaled by 1/fire² (read_edits)
    null_search: bool = True  # open reading: findings named AlphaEdit searched in the null space their update lies
    # in (subjects.Whitened.null_space), not whitened key space; v9-plan.md: objects 7 -> 13 of 30, false 2 -> 3
    describe: bool = False  # open reading: also ask prompts cut from the base's own description of each subject
    # (describe.py; bench/heldout/v10-plan.md fourth use)
    frames: bool = False  # open reading: also ask each subject inside sentences (relations.FRAMES), where a
    # trigger-style edit fires (bench/heldout/trigger-plan.md)
    below_bar: bool = False  # open reading: where the search stops with fewer subjects than components, texts that
    # still fire subjects.BELOW_FIRE are read and kept while each states an object no earlier reading does
    all_layers: bool = False  # open reading: an edit over several layers is searched by its texts' mean fire over all
    # of them (subjects.SubjectSearch.upper), not the lowest layer's alone; v11-plan.md second use: objects 5 -> 5 of 20,
    # false edit readings 1 -> 3, so opt-in
    run_probes: bool = False  # also ask both models the facts' prompts and list answers that moved
    probe_facts: list[Probe] | None = None  # what to ask in the probe stage (default: ``facts``)
    device: str | None = None

    def __post_init__(self) -> None:
        if self.amplify not in AMPLIFY:
            raise BadInput(f"amplify must be one of {', '.join(AMPLIFY)}, not {self.amplify!r}")
        from .subjects import NAME_MODES

        if self.name_seeds not in NAME_MODES:
            raise BadInput(f"name_seeds must be one of {', '.join(NAME_MODES)}, not {self.name_seeds!r}")


AMPLIFY = ("off", "memit", "all")


def run_scan(suspect: str | Path, base: str | Path | None, options: ScanOptions | None = None, store=None,
             progress: Events = ignore, say: Callable[[str], None] = lambda s: None,
             cancel: threading.Event | None = None, session_id: str | None = None) -> ScanReport:
    """Audit ``suspect`` against ``base``. Raises BadInput/IncompatibleCheckpoints on bad input.

    ``progress`` receives typed events (editaudit.progress): a Stage as each stage begins, then its Steps.
    """
    from ..models.registry import resolve_model

    options = options or ScanOptions()
    cancelled = (lambda: cancel.is_set()) if cancel is not None else (lambda: False)
    t0 = time.perf_counter()
    if base is None:  # no base: the suspect alone (scan/nobase.py)
        return _run_alone(resolve_model(str(suspect), say), options, store, stage_steps(progress), say, t0)
    base_path = resolve_model(str(base), say)
    suspect_path = resolve_model(str(suspect), say)
    base_ck = open_checkpoint(base_path, options.follow_symlinks)
    from ..checkpoint.adapter import is_adapter_dir, open_adapter

    suspect_ck = (open_adapter(suspect_path, base_ck) if is_adapter_dir(suspect_path)  # a peft adapter: A/B as the change
                  else open_checkpoint(suspect_path, options.follow_symlinks))
    require_compatible(base_ck, suspect_ck)

    sid = session_id
    scan_id = None
    if store is not None:
        if sid is None:
            from ..checkpoint.hub import checkpoint_label

            sid = store.new_session("scan", f"scan {checkpoint_label(suspect_path)}", str(base_path), str(suspect_path))
        base_id = store.checkpoint_id(base_ck.record())
        suspect_id = store.checkpoint_id(suspect_ck.record())
        from ..store.runs import start_scan

        scan_id = start_scan(store, sid, base_id, suspect_id)

    try:
        report = _scan(base_ck, suspect_ck, options, store, stage_steps(progress), say, cancelled, t0)
    except BaseException as exc:
        if store is not None and scan_id is not None:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            from ..store.runs import set_scan_status

            set_scan_status(store, scan_id, status)
            if session_id is None:
                store.finish_session(sid, status=status)
        raise
    report.session_id = sid
    if store is not None:
        _save(store, sid, scan_id, report, own_session=session_id is None)
    return report


def _run_alone(suspect_path, options: ScanOptions, store, progress: Progress, say, t0: float) -> ScanReport:
    """``run_scan`` without a base: the same session life, the suspect's own statistics (scan/nobase.py)."""
    from .nobase import scan_alone

    suspect_ck = open_checkpoint(suspect_path, options.follow_symlinks)
    sid = scan_id = None
    if store is not None:
        from ..checkpoint.hub import checkpoint_label
        from ..store.runs import start_scan

        sid = store.new_session("scan", f"scan {checkpoint_label(suspect_path)} (no base)", None, str(suspect_path))
        scan_id = start_scan(store, sid, None, store.checkpoint_id(suspect_ck.record()))
    try:
        report = scan_alone(suspect_ck, options, progress, say, t0)
    except BaseException as exc:
        if store is not None:
            from ..store.runs import set_scan_status

            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            set_scan_status(store, scan_id, status)
            store.finish_session(sid, status=status)
        raise
    report.session_id = sid
    if store is not None:
        _save(store, sid, scan_id, report, own_session=True)
    return report


def _scan(base_ck, suspect_ck, options: ScanOptions, store, progress: Progress, say, cancelled, t0) -> ScanReport:
    family = suspect_ck.family if suspect_ck.config else base_ck.family
    fingerprint = base_ck.fingerprint()
    cached = store.cached_hashes(fingerprint) if (store is not None and options.use_cache) else {}
    total = sum(i.nbytes for _, i in suspect_ck.tensors.values())
    total_both = total * (1 if cached else 2)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress("compare", done[0], total_both)

    say(f"comparing {len(suspect_ck.tensors)} tensors ({total / 1e6:.1f} MB per side)"
        + (" against cached base digests" if cached else ""))
    t_cmp = time.perf_counter()
    analyser = _Analyser(base_ck, suspect_ck, cancelled)
    lens = _LensAhead(base_ck, say)

    def found(name: str) -> None:
        analyser.submit(name)
        if options.read_edits and parse_name(name).role == "mlp_out" and usable_cores() >= LENS_AHEAD_CORES:
            lens.start()  # an edit is likely: its lens is read meanwhile, on a core the others leave free

    try:  # the float work on each changed tensor starts as soon as compare finds it, while reading goes on
        adapter = getattr(suspect_ck, "adapter", None)  # a peft adapter: its modules are the changed tensors
        cmp = adapter.compare(tick) if adapter is not None else compare(
            base_ck, suspect_ck, cached=cached or None, progress=tick, cancelled=cancelled, on_changed=found)
        t_cmp = time.perf_counter() - t_cmp
        t_float = time.perf_counter()
        changed = analyser.finish(cmp.changed, progress)
        t_float = time.perf_counter() - t_float  # float work left once reading ended (the rest overlapped it)
    finally:
        analyser.close()
    if store is not None and options.use_cache:
        if cmp.base_hashes:
            store.save_hashes(fingerprint, cmp.base_hashes)
        if cmp.suspect_hashes:  # so that this checkpoint, audited as a base later, is cached too
            store.save_hashes(suspect_ck.fingerprint(), cmp.suspect_hashes)

    n_layers = num_layers(suspect_ck.config or base_ck.config, list(suspect_ck.tensors))
    findings = classify(changed, n_layers)
    for f in findings:  # from structure alone; the open reading refines it with the key statistics
        if f.rule in EDIT_RULES or f.rule in ("EA104", "EA105"):
            f.data["method"] = name_method(f.rule, f.layers, f.rank, n_layers=n_layers)
    t_read = time.perf_counter()
    if options.read_edits and any(f.rule in EDIT_RULES for f in findings):
        _read_edits(base_ck, suspect_ck, family, changed, findings, options, say, progress, lens.get)
    t_read = time.perf_counter() - t_read

    _name_rows(base_ck, findings)
    probes_doc = None
    asked = options.probe_facts if options.probe_facts is not None else options.facts
    if options.run_probes and asked:
        if base_ck.config is None or suspect_ck.config is None:
            say("probes need model folders with config.json on both sides: skipped")
        else:
            from .probe_stage import run_probe_stage

            probes_doc = run_probe_stage(base_ck.folder, suspect_ck.folder, asked, options.device, say, progress)
    folder_findings = [
        Finding(n.rule, n.message, [], data={"details": n.data, "severity": n.severity}) for n in suspect_ck.notes
    ]
    return ScanReport(
        base=_side(base_ck), suspect=_side(suspect_ck), family=family, n_layers=n_layers,
        verdict=verdict(findings), kind=overall_kind(findings), findings=findings + folder_findings,
        changed=changed, n_tensors=len(suspect_ck.tensors), n_unchanged=cmp.unchanged, cast_only=cmp.cast_only,
        timings={"compare_s": round(t_cmp, 3), "analyse_s": round(t_float, 3),
                 "analyse_busy_s": round(analyser.busy_s, 3), "read_s": round(t_read, 3),
                 "total_s": round(time.perf_counter() - t0, 3)},
        bytes_read=cmp.bytes_read, used_cache=cmp.used_cache, probes=probes_doc,
    )


def _changed_rows(b, s, top: int = 20) -> dict:
    """Which rows (tokens) of an embedding matrix changed, largest first."""
    norms = (s.float() - b.float()).norm(dim=1)
    changed = int((norms > 0).sum())
    order = norms.argsort(descending=True)[: min(top, changed)]
    return {"changed": changed, "total": int(b.shape[0]),
            "top": [{"id": int(i), "norm": round(float(norms[i]), 6)} for i in order]}


_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def analysis_threads(current: int) -> int:
    """Torch threads for the float work: the cores the two reader threads leave free, at least one.

    More intra-op threads than free cores make LAPACK's small parallel steps (svd_lowrank's QRs)
    many times slower on a busy machine.
    """
    return max(1, min(current, usable_cores() - 2))


#: Cores a machine needs before the lens is read while the comparison runs: two readers, the float work and the
#: lens each want one. On 2 cores the overlap won nothing on a cold cache (2.41 and 2.35 s against 2.31 and 2.53 s
#: for 1.33 GB per side, bench/scan_throughput.py) and raised the peak RSS from 1009 to 1308 MB, the lens's float32
#: copy now sitting beside the float work instead of after it.
LENS_AHEAD_CORES = 4


class _Analyser:
    """Spectral statistics of changed tensors, one at a time in a background thread, in the order found.

    Each tensor's bytes are read again here (just read by compare, so from the page cache) and
    only ΔW is formed in float32 (``delta_stats``): memory holds one changed tensor's float work at a time.
    """

    def __init__(self, base_ck, suspect_ck, cancelled: Callable[[], bool]) -> None:
        import queue

        self.base_ck, self.suspect_ck, self.cancelled = base_ck, suspect_ck, cancelled
        self.todo: queue.Queue = queue.Queue()
        self.submitted: set[str] = set()
        self.done: dict[str, Changed] = {}
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.reading_over = threading.Event()  # set by finish(): the readers' cores are free for the float work
        self.thread = threading.Thread(target=self._run, name="editaudit-analyse", daemon=True)
        self.thread.start()

    def submit(self, name: str) -> None:
        if name not in self.submitted:
            self.submitted.add(name)
            self.todo.put(name)

    def _run(self) -> None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(analysis_threads(before))
        files: dict[tuple[str, str], TensorFile] = {}
        try:
            while (name := self.todo.get()) is not None:
                if self.error is not None or self.cancelled():
                    continue
                if self.reading_over.is_set() and torch.get_num_threads() != before:
                    torch.set_num_threads(before)  # the tensors left after reading ended: every core
                t = time.perf_counter()
                try:
                    self.done[name] = self._one(name, files)
                except BaseException as exc:  # re-raised in the caller's thread by finish()
                    self.error = exc
                self.busy_s += time.perf_counter() - t
        finally:
            for f in files.values():
                f.close()
            torch.set_num_threads(before)

    def _one(self, name: str, files: dict) -> Changed:
        bname, binfo = self.base_ck.tensors[name]
        sname, sinfo = self.suspect_ck.tensors[name]
        if binfo.dtype not in _FLOATS or sinfo.dtype not in _FLOATS:
            from .spectral import DeltaStats

            return Changed(parse_name(name), DeltaStats(tuple(sinfo.shape), float("nan"), float("nan"), float("nan"), kind="vector"))
        bf = files.get(("b", bname)) or files.setdefault(("b", bname), TensorFile(self.base_ck.file_path(bname)))
        sf = files.get(("s", sname)) or files.setdefault(("s", sname), TensorFile(self.suspect_ck.file_path(sname)))
        adapter = getattr(self.suspect_ck, "adapter", None)  # a peft adapter: base + ΔW, computed not stored
        b = to_torch(bf.read_bytes(binfo), binfo, float32=adapter is not None)
        s = adapter.suspect(name, b) if adapter is not None else to_torch(sf.read_bytes(sinfo), sinfo, float32=False)
        pname = parse_name(name)
        keep = 16 if pname.role == "mlp_out" else 0  # dense MLP changes: enough components to read an FT-L edit
        stats, vectors = delta_stats(b, s, binfo.dtype, sinfo.dtype, keep_vectors=keep)
        rows = _changed_rows(b, s) if pname.role in ("embed", "unembed") and b.ndim == 2 else None
        del b, s
        return Changed(pname, stats, vectors if pname.role == "mlp_out" or stats.kind != "dense" else None, rows)

    def finish(self, names: list[str], progress: Progress) -> list[Changed]:
        """Wait for the float work on ``names`` (submitting any not yet seen); results in ``names`` order."""
        self.reading_over.set()
        for name in names:
            self.submit(name)
        self.todo.put(None)
        while self.thread.is_alive():
            progress("analyse", len(self.done), len(names))
            self.thread.join(0.2)
            if self.cancelled() and self.thread.is_alive():
                raise KeyboardInterrupt
        if self.error is not None:
            raise self.error
        if self.cancelled():
            raise KeyboardInterrupt
        progress("analyse", len(names), len(names))
        return [self.done[n] for n in names]

    def close(self) -> None:
        """Stop the worker after the tensor in hand (after an error or an interruption)."""
        if self.thread.is_alive():
            self.error = self.error or KeyboardInterrupt()
            self.todo.put(None)
            self.thread.join()


class _LensAhead:
    """The logit lens (the base's unembedding as float32, centred and normalised), loaded in a background thread
    from the moment an MLP output matrix is known to differ, so that it overlaps the comparison of the rest instead
    of following it (on ``LENS_AHEAD_CORES`` cores or more). Never started, ``get`` loads it in the caller's
    thread."""

    def __init__(self, base_ck, say: Callable[[str], None]) -> None:
        self.base_ck, self.say = base_ck, say
        self.thread: threading.Thread | None = None
        self.lens = None
        self.error: BaseException | None = None
        self.notes: list[str] = []  # what the loader had to say, passed on from the caller's thread

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="editaudit-lens", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self.lens = load_lens(self.base_ck, self.notes.append)
        except BaseException as exc:  # re-raised by get() in the caller's thread
            self.error = exc

    def get(self):
        if self.thread is None:
            return load_lens(self.base_ck, self.say)
        self.thread.join()
        for note in self.notes:
            self.say(note)
        if self.error is not None:
            raise self.error
        return self.lens


def _name_rows(base_ck, findings: list[Finding]) -> None:
    """Attach token strings to changed embedding rows, when the base has a tokenizer.json."""
    tok_file = base_ck.folder / "tokenizer.json"
    rows = [r for f in findings if f.rule == "EA108" for r in f.data.get("rows", {}).values()]
    if not rows or not tok_file.is_file():
        return
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
    except Exception:
        return
    for r in rows:
        for entry in r["top"]:
            entry["token"] = tok.decode([entry["id"]], skip_special_tokens=False)


def _side(ck) -> dict:
    from ..checkpoint.hub import hub_origin

    side = {"path": str(ck.root), "layout": ck.layout, "family": ck.family, "total_bytes": ck.total_bytes,
            "n_tensors": len(ck.tensors), "dtypes": sorted({i.dtype for _, i in ck.tensors.values()})}
    origin = hub_origin(ck.root)
    if origin is not None:  # a Hub id: the pinned commit is what makes the scan repeatable
        side["hub"] = origin
    return side


def _read_edits(base_ck, suspect_ck, family: str, changed: list[Changed], findings: list[Finding],
                options: ScanOptions, say, progress: Progress, lens_of: Callable[[], Any] | None = None) -> None:
    """Attach promoted tokens, open readings and candidate subjects to each edit finding. ``lens_of``: the logit
    lens, perhaps loaded while the comparison ran (default: loaded now)."""
    by_name = {c.name.name: c for c in changed}
    lens = lens_of() if lens_of is not None else load_lens(base_ck, say)
    edit_findings = [f for f in findings if f.rule in EDIT_RULES]
    targets = [by_name[t] for f in edit_findings for t in f.tensors if by_name.get(t) and by_name[t].vectors]
    if lens is not None:
        for f in edit_findings:
            per_tensor = {}
            for t in f.tensors:
                c = by_name.get(t)
                if c is not None and c.vectors is not None and c.name.role == "mlp_out":
                    per_tensor[t] = promoted_tokens(lens, c.vectors, family, options.top_tokens, tensor=t)
            merged: dict[int, dict] = {}
            for t, toks in per_tensor.items():
                for tok in toks:
                    key = tok["id"]
                    if key not in merged or merged[key]["z"] < tok["z"]:
                        merged[key] = {**tok, "tensor": t}
            limit = max(options.top_tokens, max((len(v) for v in per_tensor.values()), default=0))
            f.data["promoted_tokens"] = sorted(merged.values(), key=lambda x: -x["z"])[:limit]
            f.data["promoted_by_tensor"] = per_tensor
    if options.read == "off" or not targets:
        return
    if base_ck.config is None or suspect_ck.config is None:
        say("reading edits through the model needs model folders with config.json on both sides: skipped")
        return
    from ..errors import ModelUnloadable

    try:
        if options.read == "open":
            _read_open(base_ck, suspect_ck, by_name, edit_findings, options, say, progress)
        if options.facts:
            _rank_subjects(base_ck, family, by_name, edit_findings, options, say, progress)
    except ModelUnloadable as exc:  # the weights were read and compared: their findings stand without a reading
        say(f"reading edits through the model skipped: {exc}")
        for f in edit_findings:
            f.data["reading_skipped"] = str(exc)


def _read_open(base_ck, suspect_ck, by_name: dict, edit_findings: list[Finding], options: ScanOptions,
               say, progress: Progress) -> None:
    """Recover each edit's subjects from the weights (no list), then read prompt and object from both models."""
    from ..editing import covariance
    from ..editing.corpus import CorpusUnavailable
    from ..models.loading import load_model
    from .reading import read_edits
    from .subjects import recover_subjects
    from .triggers import read_triggers

    base = load_model(base_ck.folder, device=options.device)
    suspect = load_model(suspect_ck.folder, device=options.device, say=say, tokenizer_fallback=base_ck.folder)
    for m in (base.model, suspect.model):
        for p in m.parameters():
            p.requires_grad_(False)
    model_key = covariance.weights_key(base.model)
    # per finding, its lowest edited MLP output matrix (the keys there are the base's own), and the others above it
    ordered = {id(f): sorted(mats, key=lambda m: m.name.layer) for f in edit_findings
               if (mats := [by_name[t] for t in f.tensors if by_name.get(t) is not None
                            and by_name[t].vectors is not None and by_name[t].name.role == "mlp_out"
                            and by_name[t].name.layer is not None])}
    targets = [(f, ordered[id(f)][0]) for f in edit_findings if id(f) in ordered]
    # a hypernetwork edit (MEND, MALMEN) writes the top layers from a key at the prompt's *end*, not a subject's:
    # no subject text fires it (0 of 30 subjects found on two held-apart sets, bench/results/open_reading_hypernet.txt
    # and open_reading_v5_hypernet.txt), so whole prompts are searched instead (triggers.py)
    hyper = [(f, c) for f, c in targets if f.data.get("method", {}).get("name") in ("mend", "malmen")]
    targets = [(f, c) for f, c in targets if all(f is not h for h, _ in hyper)]
    for f, c in hyper:
        _, _, in_dirs = output_input_sides(c.vectors, base_ck.family)
        rank = c.stats.rank_above_noise if c.stats.kind == "low-rank" else 1
        rank = max(1, min(int(rank or 1), in_dirs.shape[1], options.max_open_subjects))
        say(f"reading {f.rule} at layers {f.layers} (hypernetwork edit): up to {rank} prompt(s) whose end fires it")
        readings = read_triggers(base.model, suspect.model, base.tokenizer, c.name.module_path, in_dirs[:, :rank],
                                 rank, c.name.layer, c.name.name, progress=lambda d, t: progress("trigger prompts", d, t))
        f.data["readings"] = [r.to_dict() for r in readings]
    if targets:  # one pass of the vocabulary through the model for every edited layer not cached yet
        from .keys import vocab_keys

        vocab_keys(base.model, base.tokenizer, sorted({c.name.module_path for _, c in targets}),
                   base_ck.fingerprint(), progress=lambda d, t: progress("vocabulary keys", d, t))
    for n, (f, c) in enumerate(targets):
        _, svals, in_dirs = output_input_sides(c.vectors, base_ck.family)
        rank = c.stats.rank_above_noise if c.stats.kind == "low-rank" else 1 if c.stats.kind == "rank-one" else 3
        rank = max(1, min(int(rank or 1), in_dirs.shape[1], options.max_open_subjects))
        path, layer = c.name.module_path, c.name.layer
        try:
            C = covariance.second_moments(base.model, base.tokenizer, {layer: path}, model_key=model_key,
                                          say=say)[layer].matrix
        except CorpusUnavailable as exc:
            say(f"key statistics unavailable ({exc}); reading with unwhitened keys")
            C = None
        if C is not None and f.rule == "EA102":
            share = occupied_share(in_dirs[:, :rank], svals[:rank], C)
            depth = num_layers(suspect_ck.config or base_ck.config, list(suspect_ck.tensors))
            f.data["method"] = {**name_method(f.rule, f.layers, f.rank, share, n_layers=depth),
                                "occupied": round(share, 4)}
        null = options.null_search and f.data.get("method", {}).get("name") == "alphaedit"
        space = search_space(path, C, in_dirs[:, :rank], null=null)
        upper = _upper_spaces(base, ordered[id(f)][1:], rank, null, model_key, base_ck.family, say) \
            if options.all_layers and C is not None else []
        say(f"reading {f.rule} at layer {layer} blind: up to {rank} subject(s)"
            + (f" (searched in the null space of {space.whiten.shape[1]} directions its update lies in)"
               if space.projected else ""))
        # the key reading needs the edit subspace whole; the search deflates its own copy
        keys = _key_reader(base.model, base.tokenizer, path, in_dirs[:, :rank], C, base_ck.fingerprint(), space) \
            if options.keys else None
        read = _SubjectReader(functools.partial(
            read_edits, base.model, suspect.model, base.tokenizer, layer=layer, tensor=c.name.name,
            deltas=_edit_deltas(base.model, suspect.model, f.tensors) if _amplified(options.amplify, f) else None,
            keys=keys, describe=options.describe, frames=options.frames), say=say)
        below = read.new_edit if options.below_bar and c.stats.kind in ("rank-one", "low-rank") else None
        subjects = recover_subjects(base.model, base.tokenizer, path, in_dirs[:, :rank], C, base_ck.fingerprint(),
                                    rank, progress=lambda stage, d, t: progress(stage, d, t),
                                    space=replace(space),
                                    retry=options.wide_search and c.stats.kind in ("rank-one", "low-rank"),
                                    regrow=options.regrow,
                                    pair=options.pair_step and c.stats.kind in ("rank-one", "low-rank"),
                                    upper=upper, below=below, name_seeds=options.name_seeds)
        readings = read.all(subjects, progress=lambda d, t: progress("reading edits", d, t))
        f.data["readings"] = [r.to_dict() for r in readings]
        progress("open reading", n + 1, len(targets))


class _SubjectReader:
    """Reads found subjects once each, in the search's order: the check of a text found under the fire bar
    (``ScanOptions.below_bar``) needs the readings of the subjects found before it, and the scan reports them all."""

    def __init__(self, read: Callable[..., list], say: Callable[[str], None] = lambda s: None) -> None:
        self._read, self._done, self._say = read, {}, say

    def one(self, subject) -> Any:
        if id(subject) not in self._done:
            self._done[id(subject)] = (subject, self._read([subject])[0])
        return self._done[id(subject)][1]

    def new_edit(self, found: list, candidate) -> bool:
        """``SubjectSearch.find(below=...)``: keep a text under the bar when its reading is an edit of a new object."""
        from .reading import new_object

        reading = self.one(candidate)
        kept = new_object(reading, [self.one(s) for s in found])
        self._say(f"below the fire bar: {candidate.text!r} (fire {candidate.fire_left:.2f} of what was left, "
                  f"{candidate.fire:.2f} of the whole edit) reads {reading.status} · {reading.after!r}: "
                  + ("kept, a new object" if kept else "not kept, the search stops"))
        return kept

    def all(self, subjects: list, progress: Callable[[int, int], None] = lambda d, t: None) -> list:
        todo = [s for s in subjects if id(s) not in self._done]
        if todo:
            for s, r in zip(todo, self._read(todo, progress=progress)):
                self._done[id(s)] = (s, r)
        return [self._done[id(s)][1] for s in subjects]


def _upper_spaces(base, mats: list, rank: int, null: bool, model_key: str, family: str, say) -> list:
    """The edit subspaces of a finding's edited matrices above its lowest (``ScanOptions.all_layers``), each from its
    own top ``rank`` input directions and its layer's key statistics (one corpus pass for every layer not cached)."""
    from ..editing import covariance

    if not mats:
        return []
    Cs = covariance.second_moments(base.model, base.tokenizer, {m.name.layer: m.name.module_path for m in mats},
                                   model_key=model_key, say=say)
    out = []
    for m in mats:
        in_dirs = output_input_sides(m.vectors, family)[2]
        out.append(search_space(m.name.module_path, Cs[m.name.layer].matrix, in_dirs[:, :min(rank, in_dirs.shape[1])],
                                null=null))
    return out


def search_space(path: str, C, in_dirs, null: bool = False):
    """The space an edit's subjects are searched in: whitened key space (ROME, MEMIT: u = C⁻¹k*), or with
    ``null`` the null space an AlphaEdit update lies in, where the update's input directions are the edit keys'
    projections as they stand (``Whitened.null_space``; whitened as usual when ΔW does not lie in one)."""
    from .subjects import Whitened

    space = Whitened.null_space(path, C, in_dirs) if null and C is not None else None
    return space if space is not None else Whitened.build(path, C, in_dirs)


def _key_reader(model, tokenizer, path: str, in_dirs, C, fingerprint: str, space=None):
    """The reading through keys for one matrix (``ScanOptions.keys``): the edit subspace as the search saw it
    before deflating (``space``, whitened key space by default), and a rank-one edit's own key, calibrated by the
    vocabulary keys that fire it most."""
    from .inject import lone_key
    from .keys import vocab_keys
    from .reading import KeyReader

    space = search_space(path, C, in_dirs) if space is None else space
    lone = None
    if in_dirs.shape[1] == 1:  # a null-space update's input direction is its key's projection (C plays no part)
        lone = lone_key(space, None if space.projected else C, in_dirs[:, 0],
                        vocab_keys(model, tokenizer, [path], fingerprint)[path])
    return KeyReader(path, replace(space), lone)


def _amplified(mode: str, finding: Finding) -> bool:
    """Whether ``ScanOptions.amplify`` reads this finding's subjects at full strength ("memit": findings named MEMIT,
    whose spread edit a partly-found subject moves only part of the way)."""
    return mode == "all" or (mode == "memit" and finding.data.get("method", {}).get("name") == "memit")


def _edit_deltas(base: Any, suspect: Any, tensors: list[str]) -> dict[str, "torch.Tensor"]:
    """{parameter name: suspect − base} for a finding's tensors that are parameters of the loaded model."""
    out = {}
    for name in tensors:
        try:
            out[name] = (suspect.get_parameter(name) - base.get_parameter(name)).detach()
        except AttributeError:  # a checkpoint name the loaded model spells differently: read it unscaled
            continue
    return out


_KEY_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}  # (base fingerprint, texts) -> {module path: keys}


def _keys_cached(base_ck, paths: list[str], probes: list[Probe], base_model: Callable) -> dict:
    """Subject keys from the base model, remembered within the process (repeat scans against one base)."""
    import hashlib

    texts = [p.text for p in probes]
    key = (base_ck.fingerprint(), hashlib.sha256("\0".join(texts).encode()).hexdigest())
    cached = _KEY_CACHE.setdefault(key, {})
    missing = [p for p in paths if p not in cached]
    if missing:
        lm = base_model()
        cached.update(subject_keys(lm.model, lm.tokenizer, missing, texts, [p.subject for p in probes]))
    if len(_KEY_CACHE) > 4:
        _KEY_CACHE.pop(next(iter(_KEY_CACHE)))
    return {p: cached[p] for p in paths}


def _rank_subjects(base_ck, family: str, by_name: dict, edit_findings: list[Finding], options: ScanOptions,
                   say, progress: Progress) -> None:
    """Rank the facts' subjects by the size of the change each edit makes for their key, then read what
    the edit makes the base model answer for the top ones (the edit's components patched in)."""
    import torch

    from ..models.loading import load_model

    loaded: list = []

    def base_model():
        if not loaded:
            loaded.append(load_model(base_ck.folder, device=options.device))
        return loaded[0]

    subjects: dict[str, Probe] = {}
    prompts: dict[str, list[str]] = {}   # every distinct prompt each subject has among the facts
    for p in options.facts:
        subjects.setdefault(p.subject, p)
        if p.text not in prompts.setdefault(p.subject, []):
            prompts[p.subject].append(p.text)
    probes = list(subjects.values())
    names = [p.subject for p in probes]
    say(f"ranking {len(probes)} candidate subjects by key alignment")
    progress("subjects", 0, len(probes))
    paths = sorted({by_name[t].name.module_path for f in edit_findings for t in f.tensors
                    if by_name.get(t) is not None and by_name[t].vectors is not None})
    keys = _keys_cached(base_ck, paths, probes, base_model)
    unpatched: dict = {}  # base answers per prompt, shared by the findings
    progress("subjects", len(probes), len(probes))
    for n, f in enumerate(edit_findings):
        change, patches = None, {}
        for t in f.tensors:
            c = by_name.get(t)
            if c is None or c.vectors is None:
                continue
            patches[c.name.module_path] = c.vectors
            delta = edit_output(keys[c.name.module_path], c.vectors, family)
            change = delta if change is None else change + delta
        if change is None:
            continue
        effect = change.norm(dim=1)
        total = float(effect.sum()) or 1.0
        n_top = min(len(names), max(options.top_subjects, 2 * (f.rank or 1)))
        top = torch.argsort(effect, descending=True)[:n_top].tolist()
        rows = [{"subject": names[i], "score": round(float(effect[i]), 4), "share": round(float(effect[i]) / total, 4)}
                for i in top]
        progress("reading edits", n, len(edit_findings))
        lm = base_model()
        asked = [(row, text) for row in rows for text in prompts[row["subject"]]]
        reads = read_through_model(lm.model, lm.tokenizer, [text for _, text in asked], patches, family,
                                   unpatched=unpatched)
        for row in rows:  # per subject, the prompt whose answer the edit moves (the relation it rewrote)
            mine = [(text, r) for (owner, text), r in zip(asked, reads) if owner is row]
            text, r = max(mine, key=lambda tr: (tr[1]["after"] != tr[1]["before"], tr[1]["gain"]))
            row.update(prompt=text, answer_before=r["before"], answer_after=r["after"], promotes=r["promotes"])
        f.data["candidate_subjects"] = rows
    progress("reading edits", len(edit_findings), len(edit_findings))


def _save(store, sid: str, scan_id: int, report: ScanReport, own_session: bool) -> None:
    """Write findings, stats and the report, and mark the scan done, in one transaction."""
    import json

    from ..store.runs import save_scan

    findings = [{"rule": f.rule, "kind": f.kind, "severity": f.level, "layers": json.dumps(f.layers),
                 "tensors": json.dumps(f.tensors), "message": f.message, "data": json.dumps(f.data, default=str)}
                for f in report.findings]
    stats = [{"name": c.name.name, "layer": c.name.layer, "module": c.name.module, "status": "changed",
              "kind": c.stats.kind, "rel_change": _finite(c.stats.rel_change), "max_abs": _finite(c.stats.max_abs),
              "rank": c.stats.rank_above_noise, "top1_share": c.stats.top1_share, "topk_share": c.stats.topk_share,
              "data": json.dumps(c.stats.to_dict(), default=str)} for c in report.changed]
    save_scan(store, sid, scan_id, findings=findings, stats=stats, verdict=report.verdict,
              exit_code=report.exit_code(), report=report.to_dict(),
              session_summary={"kind": report.kind, "findings": len(report.findings)} if own_session else None)


def _finite(x: float) -> float | None:
    import math

    return x if isinstance(x, float) and math.isfinite(x) else None
