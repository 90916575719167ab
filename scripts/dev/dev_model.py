"""What the development scripts share: the embedded base, frozen, with its fingerprint (the vocabulary-key cache's
key), and the subject search the scan builds for a development suspect's lowest edited matrix."""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def edited_copy(model, deltas_file: Path):
    """A copy of ``model`` with a development suspect's weight deltas ({parameter: ΔW}, make_dev_suspects.py) added."""
    import copy

    suspect = copy.deepcopy(model)
    params = dict(suspect.named_parameters())
    with torch.no_grad():
        for name, d in torch.load(deltas_file, weights_only=True).items():
            params[name].add_(d)
    return suspect


def load_in_place(model, clean: dict, folder: Path, name: str) -> tuple[list[dict], list[int]]:
    """Set ``model``'s weights to ``clean`` ({parameter: tensor}) plus suspect ``name``'s deltas from ``folder``
    (make_dev_suspects.py), or to ``clean`` alone for ``base``; returns the suspect's facts and edited layers. In
    place, for scripts that walk several suspects on one loaded model."""
    import json

    facts: list[dict] = []
    delta: dict = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(clean[n])
        if name != "base":
            delta = torch.load(folder / f"{name}.pt", weights_only=True)
            for n, p in model.named_parameters():
                if n in delta:
                    p += delta[n].to(p.dtype)
            facts = [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines() if x.strip()]
    return facts, sorted({int(n.split(".")[2]) for n in delta})


def print_findings(report: dict, header: str) -> None:
    """A scan report's edit findings and their readings, one line each, under ``== header``."""
    print(f"== {header}")
    for f in report["findings"]:
        print(f"  {f['rule']} layers {f['layers']}: {(f.get('method') or {}).get('name') or '-'}")
        for r in f.get("readings", []):
            print(f"    {r.get('subject')!r} · {r.get('prompt')!r} · {r.get('after')!r} (was {r.get('before')!r}) "
                  f"conf {r.get('confidence')} {r.get('status')}")
    sys.stdout.flush()


def suspect_parser(doc: str):
    """An argument parser for a script on one development suspect: FOLDER (make_dev_suspects.py's) and STEM."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the suspects' folder (make_dev_suspects.py)")
    ap.add_argument("stem", help="the suspect, e.g. memit-batch-0")
    return ap


def parse_suspect(ap):
    """``ap.parse_args()``, with a clear error when the suspect's deltas or facts are missing."""
    a = ap.parse_args()
    for ext in ("pt", "jsonl"):
        if not (a.folder / f"{a.stem}.{ext}").is_file():
            ap.error(f"no {a.folder / f'{a.stem}.{ext}'}: make the suspect with scripts/dev/make_dev_suspects.py")
    return a


def frozen_base():
    """(loaded SmolLM2-135M with gradients off, its checkpoint fingerprint)."""
    from editaudit.checkpoint.folder import open_checkpoint
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model

    folder = ensure_model("smollm2-135m")
    lm = load_model(folder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm, open_checkpoint(folder).fingerprint()


def screen_parser(doc: str):
    """The screens' arguments: DIR (make_dev_suspects.py's), SUSPECT[,SUSPECT...] (``base``: the unedited model),
    --model, --threads, --out; the caller adds its own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("suspects")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    return ap


def every_layer(name: str = "smollm2-135m"):
    """The screens' setup: (model, tokenizer, {layer: MLP output matrix path}, transposed, the clean weights to load
    suspects onto with ``load_in_place``), the model frozen."""
    from editaudit.editing.layers import layout_for
    from editaudit.models import families
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model

    lm = load_model(ensure_model(name))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    layout = layout_for(lm.model)
    modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    clean = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    return lm.model, lm.tokenizer, modules, families.family(layout.family).conv1d, clean


def with_key_stats(spec: str):
    """A model folder or registry name loaded frozen, for the base-free screens: (model, tokenizer, {layer: MLP output
    matrix path}, transposed, {layer: KeyEig} from the model's own key statistics)."""
    from editaudit.editing import covariance
    from editaudit.editing.layers import layout_for
    from editaudit.models import families
    from editaudit.models.loading import load_model
    from editaudit.models.registry import resolve_model
    from editaudit.scan.nobase import KeyEig

    lm = load_model(spec if Path(spec).is_dir() else resolve_model(spec))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    layout = layout_for(lm.model)
    modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    moms = covariance.second_moments(lm.model, lm.tokenizer, modules, model_key=covariance.weights_key(lm.model))
    eigs = {layer: KeyEig.of(moms[layer].matrix) for layer in modules}
    return lm.model, lm.tokenizer, modules, families.family(layout.family).conv1d, eigs


def lowest_search(lm, fingerprint: str, deltas: dict, rank: int, null: bool = False):
    """(layer, SubjectSearch) over the lowest edited MLP output matrix of ``deltas`` ({parameter: ΔW}), its top ``rank`` input
    directions whitened by the cached key statistics. ``null``: an edit the scan names AlphaEdit is searched in the
    null space its update lies in (``Whitened.null_space``), as the scan does since v9's first use
    (bench/heldout/v9-plan.md); without it, the search as it was before (whitened for every method)."""
    from editaudit.editing import covariance
    from editaudit.scan.keys import vocab_keys
    from editaudit.scan.method import name_method, occupied_share
    from editaudit.scan.service import search_space
    from editaudit.scan.subjects import SubjectSearch

    mlp = sorted((k for k in deltas if "down_proj" in k), key=lambda n: int(n.split(".")[2]))
    name = mlp[0]
    layer, path = int(name.split(".")[2]), name.rsplit(".", 1)[0]
    _, svals, vh = torch.linalg.svd(deltas[name].float(), full_matrices=False)
    C = covariance.second_moments(lm.model, lm.tokenizer, {layer: path},
                                  model_key=covariance.weights_key(lm.model))[layer].matrix
    named = name_method("EA102", [int(n.split(".")[2]) for n in mlp], rank,
                        occupied_share(vh[:rank].T, svals[:rank], C), lm.model.config.num_hidden_layers)["name"] \
        if null else None
    space = search_space(path, C, vh[:rank].T, null=named == "alphaedit")
    return layer, SubjectSearch(lm.model, lm.tokenizer, space,
                                vocab_keys(lm.model, lm.tokenizer, [path], fingerprint)[path])


def layer_spaces(lm, deltas: dict, rank: int, null: bool = False) -> list:
    """The edit subspace of each of ``deltas``'s edited MLP output matrices, lowest first, each from its own top
    ``rank`` input directions and its layer's cached key statistics; ``null``: null spaces, as for an edit the scan
    names AlphaEdit."""
    from editaudit.editing import covariance
    from editaudit.scan.service import search_space

    mlp = sorted((k for k in deltas if "down_proj" in k), key=lambda n: int(n.split(".")[2]))
    out = []
    for name in mlp:
        layer, path = int(name.split(".")[2]), name.rsplit(".", 1)[0]
        _, _, vh = torch.linalg.svd(deltas[name].float(), full_matrices=False)
        C = covariance.second_moments(lm.model, lm.tokenizer, {layer: path},
                                      model_key=covariance.weights_key(lm.model))[layer].matrix
        out.append(search_space(path, C, vh[:rank].T, null=null))
    return out


def upper_spaces(lm, deltas: dict, rank: int, null: bool = False) -> list:
    """``layer_spaces`` above the lowest: ``SubjectSearch.upper`` (``scan --all-layers``)."""
    return layer_spaces(lm, deltas, rank, null)[1:]


#: a reading as reading_rule_trial.py prints it: [rule] suspect: subject · prompt · after (was before) conf C status
TRIAL_LINE = re.compile(r"^  \[(\S+)\] (\S+): (.*) · (.*) · (.*) \(was .*\) conf (\S+) (edit|uncertain)$")


def trial_readings(log: Path, section: str | None = None) -> dict[tuple[str, str], list[dict]]:
    """{(rule, suspect): readings} from a reading_rule_trial.py output, in the form score_suspect takes (the
    confidence stands in for the fire); ``section``: only the log's '## SECTION' part (a log of several folders)."""
    reads: dict[tuple[str, str], list[dict]] = defaultdict(list)
    inside = section is None
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = section is None or line[3:].strip() == section
        m = TRIAL_LINE.match(line)
        if m and inside:
            rule, stem, subject, _prompt, after, conf, status = m.groups()
            reads[rule, stem].append({"subject": ast.literal_eval(subject), "after": ast.literal_eval(after),
                                      "status": status, "fire": float(conf)})
    return reads


def scored_trial(log: Path, folder: Path, tokenizer, section: str | None = None) -> dict[str, list[tuple]]:
    """{rule: [(suspect, facts, rows, false, edit readings)]}: a reading_rule_trial.py log's readings of each suspect
    in ``folder`` scored by scripts/open_reading_eval.py's rules (``score_suspect``), per rule in the log's order."""
    import runpy

    from editaudit.probing.format import load_probes

    score = runpy.run_path(str(Path(__file__).resolve().parents[1] / "open_reading_eval.py"))["score_suspect"]
    out: dict[str, list[tuple]] = {}
    for (rule, stem), reads in trial_readings(log, section).items():
        facts = load_probes(folder / f"{stem}.jsonl")
        out.setdefault(rule, []).append((stem, facts, *score(tokenizer, facts, reads, len(facts) == 1)))
    return out


def emit(lines: list[str], out: Path | None) -> None:
    """Print a development table, and write it to ``out`` when given."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        out.write_text(text)


def erase_eval_suspect(folder: Path, facts_file: Path | None = None):
    """A suspect folder ``scripts/erase_eval.py --work`` keeps (its ``erase_eval_facts.json`` beside the weights):
    (meta, its facts as Probes, the loaded model, frozen). ``facts_file``: the held-apart set (default v13)."""
    import json

    from editaudit.models.loading import load_model
    from editaudit.probing.format import load_probes

    root = Path(__file__).resolve().parents[2]
    meta = json.loads((folder / "erase_eval_facts.json").read_text())
    by_id = {p.id: p for p in load_probes(facts_file or root / "bench/heldout/smollm2-135m-v13.jsonl")}
    lm = load_model(folder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return meta, [by_id[i] for i in meta["facts"]], lm
