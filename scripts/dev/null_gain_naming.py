"""Telling AlphaEdit from MEMIT and ROME without the base, by which edit direction of a subject's key the suspect's
matrix gains along. Development: spent facts only.

ROME and MEMIT write each subject's key k into ΔW along u_C = C⁻¹k; AlphaEdit writes it along the key's null-space
part u_P = P k (P: C's eigen-directions below a share of the median eigenvalue), so of all unit directions u_C is the
one ΔW of a ROME or MEMIT edit acts on most, and u_P (for that P) the one an AlphaEdit edit acts on most. Per layer,
each subject's key is scored along both, as the key-gain screen scores it (``scan/gain.py``: the gain ‖W û‖ over the
matrix's RMS gain, as z over every vocabulary token's key behind the stand-in name piece):

    z_C(k) along C⁻¹k/‖C⁻¹k‖,   z_P(k) along P k/‖P k‖,   lean = z_P / z_C

C comes from the suspect's own keys, as a scan without a base makes it. Subjects: the planted ones (``--facts``
folders written by ``editaudit edit`` with a ``facts.jsonl`` beside them are not assumed; give FACTS per suspect).

    python scripts/dev/null_gain_naming.py SUSPECT=FACTS[,SUSPECT=FACTS...] [--layers 0-9] [--shares 0.5,0.25]
        [--threads 2] [--out F]

SUSPECT: a model folder (``editaudit edit ... --out``) or ``smollm2-135m``; FACTS: the facts written into it (probe
JSONL; ignored for the base, whose rows score those of the first suspect).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from editaudit.editing.covariance import weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.scan import gain  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402
from editaudit.scan.nobase import layer_spectra  # noqa: E402
from editaudit.scan.subjects import name_piece, word_tokens  # noqa: E402


class NullGainSpace(gain.GainSpace):
    """``gain.GainSpace`` along P k instead of C⁻¹k: weight 1 on C's eigen-directions under ``share`` × the median
    eigenvalue, 0 elsewhere."""

    def __init__(self, path: str, weight: torch.Tensor, ev: torch.Tensor, Q: torch.Tensor, share: float):
        super().__init__(path, weight, ev, Q)
        self.inv = (ev.double() < share * float(ev.double().median())).float()


def parse_layers(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspects")
    ap.add_argument("--layers", default="0-9")
    ap.add_argument("--shares", default="0.5,0.25")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shares = [float(s) for s in args.shares.split(",")]
    lines: list[str] = [f"# null-space vs C⁻¹ gain of the planted subjects' keys; command: python "
                        f"scripts/dev/null_gain_naming.py {' '.join(sys.argv[1:])}",
                        "# z: key-gain z over the vocabulary behind the stand-in piece; lean = z_P / z_C "
                        "(medians over the subjects)"]
    first_facts = None
    for item in args.suspects.split(","):
        name, _, facts_path = item.partition("=")
        t0 = time.perf_counter()
        folder = ensure_model(name) if not Path(name).exists() else Path(name)
        lm = load_model(folder)
        model, tok = lm.model, lm.tokenizer
        for p in model.parameters():
            p.requires_grad_(False)
        facts = load_probes(facts_path) if facts_path else first_facts
        first_facts = first_facts or facts
        layout = layout_for(model)
        layers = parse_layers(args.layers)
        modules = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
        _, Cs = layer_spectra(model, tok, modules, weights_key(model))
        spaces: dict[str, gain.GainSpace] = {}
        for layer in layers:
            path = modules[layer]
            w = model.get_submodule(path).weight.detach().cpu()
            spaces[f"C|{path}"] = gain.GainSpace(path, w, Cs[layer].ev, Cs[layer].Q)
            for s in shares:
                spaces[f"P{s}|{path}"] = NullGainSpace(path, w, Cs[layer].ev, Cs[layer].Q, s)
        start_ok, _ = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
        piece = name_piece(model, tok, start_ok)
        by_path: dict[str, dict[str, gain.GainSpace]] = {}
        for key, sp in spaces.items():
            by_path.setdefault(sp.path, {})[key] = sp
        # one vocabulary pass per space kind (vocab_gains keys its spaces by path)
        for kind in ["C"] + [f"P{s}" for s in shares]:
            sub = {sp.path: sp for key, sp in spaces.items() if key.split("|")[0] == kind}
            for path, g in gain.vocab_gains(model, tok, sub, lead=piece).items():
                sub[path].calibrate(g)
        seqs = [context_ids(tok) + tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in facts]
        keys = keys_of(model, [modules[x] for x in layers], seqs)
        lines.append(f"== {name}: {len(facts)} planted subjects ({time.perf_counter() - t0:.0f} s)")
        for layer in layers:
            path = modules[layer]
            k = keys[path]
            zc = spaces[f"C|{path}"].fire(k)
            row = f"  L{layer:2d}  z_C {float(zc.median()):7.1f}"
            for s in shares:
                zp = spaces[f"P{s}|{path}"].fire(k)
                lean = (zp / zc.clamp_min(1e-6)).median()
                row += f"  z_P{s} {float(zp.median()):7.1f} lean {float(lean):5.2f}"
            lines.append(row)
        print("\n".join(lines[-len(layers) - 1:]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
