"""How visible an edit is to the base-free scan: for each edited MLP output matrix of development suspects, the
edit's singular values inside C's low-energy directions against the unedited matrix's own there, and the scan's
statistic s_1 = σ_1(W Q)/median σ(W Q) (``scan.nobase``) with and without the edit, for Q = C's lower half (the
scan's choice) and lower quarter (about AlphaEdit's null space at its default threshold).

    python scripts/dev/make_dev_suspects.py /tmp/dev8 FACTS rome:single:4,memit:batch:10,alphaedit:batch:10
    python scripts/dev/nobase_visibility.py /tmp/dev8 [--vocab base,rome-single-0,memit-batch-0] [--out FILE]

Then the other statistics tried, each edited layer's value against the largest over the unedited layers (the base's
at every other layer): s_1 and s_2 of W Q for Q = C's lowest half, quarter, eighth and sixteenth; s_1 of W Q Λ^-a
over all directions (a = ¼, ½: the low-energy directions weighted up). With ``--vocab``, per layer the best
word-start token's fire ("The" + token, its key whitened and restricted to the low half, as the base-free subject
search scores it) on the span of the layer's top 16 low-half directions, for the suspects named (``base``: none).

C comes from the base's keys (the key-statistics corpus, cached); at an edited matrix the suspect's own keys are
the same up to the edits below it. "max unedited" is the largest s_1 over the base's 30 layers: what a layer must
beat to be flagged (the scan's bar, ``SPIKE``, was set above it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing import covariance  # noqa: E402
from editaudit.editing.covariance import weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402


def ratio(s: torch.Tensor, i: int = 0) -> float:
    return float(s[i] / s.median())


FRACTIONS = {"half": 2, "quarter": 4, "eighth": 8, "sixteenth": 16}


def variants(W: torch.Tensor, Q: torch.Tensor, ev: torch.Tensor) -> dict[str, float]:
    """The statistics tried, for one matrix ([d_out, d_in], float64) and C's eigen-decomposition (ascending)."""
    out = {}
    d = Q.shape[0]
    for name, k in FRACTIONS.items():
        s = torch.linalg.svdvals(W @ Q[:, : d // k])
        out[f"s1 {name}"], out[f"s2 {name}"] = ratio(s), ratio(s, 1)
    evc = ev.clamp(min=float(ev[ev > 0].min()))
    for a in (0.25, 0.5):
        out[f"s1 Λ^-{a}"] = ratio(torch.linalg.svdvals((W @ Q) * evc.pow(-a)))
    return out


def vocab_fire(model, tok, mods: dict[int, str], eigs: dict, k: int = 16) -> dict[int, tuple[float, str]]:
    """Per layer, the best word-start token's fire on the span of the top ``k`` directions of W Q_low."""
    from editaudit.scan.keys import context_ids, last_keys
    from editaudit.scan.nobase import low_space, restricted_spectrum
    from editaudit.scan.subjects import word_tokens

    spaces = {}
    for layer, path in mods.items():
        sp = restricted_spectrum(model.get_submodule(path).weight.detach(), eigs[layer], layer, path, keep=k)
        spaces[path] = low_space(path, eigs[layer], sp.in_dirs[:, :k])
    start, _ = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    ids = torch.nonzero(start).flatten()
    pre = torch.tensor(context_ids(tok))
    fires: dict[str, list[torch.Tensor]] = {p: [] for p in mods.values()}
    for i in range(0, len(ids), 1024):
        chunk = ids[i:i + 1024]
        got = last_keys(model, list(mods.values()), torch.cat([pre.expand(len(chunk), -1), chunk[:, None]], 1))
        for p in mods.values():
            fires[p].append(spaces[p].fire(got[p]))
    out = {}
    for layer, p in mods.items():
        f = torch.cat(fires[p])
        j = int(f.argmax())
        out[layer] = (float(f[j]), tok.convert_ids_to_tokens([int(ids[j])])[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--vocab", default="", help="suspects (file stems, or base) to score the vocabulary's keys on")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(ensure_model(a.model))
    model, tok = lm.model, lm.tokenizer
    layout = layout_for(model)
    mods = {layer: layout.rewrite_name(layer) for layer in range(layout.n_layers)}
    mom = covariance.second_moments(model, tok, mods, model_key=weights_key(model))
    from editaudit.scan.nobase import KeyEig

    eigs = {layer: KeyEig.of(mom[layer].matrix) for layer in mods}
    base_var = {layer: variants(model.get_submodule(path).weight.detach().double(), eigs[layer].Q, eigs[layer].ev)
                for layer, path in mods.items()}
    deltas = {f.stem: torch.load(f, weights_only=True) for f in sorted(a.deltas.glob("*.pt"))}
    edited_var: dict[str, dict[int, dict[str, float]]] = {}  # per suspect, its edited layers' statistics
    lines = [f"base-free visibility of edits on {a.model}: suspects from {a.deltas}",
             "command: python scripts/dev/nobase_visibility.py " + " ".join(sys.argv[1:]),
             f"max unedited s_1 over {len(mods)} layers: half {max(v['s1 half'] for v in base_var.values()):.1f}, "
             f"quarter {max(v['s1 quarter'] for v in base_var.values()):.1f}",
             f"{'suspect':20s} {'layer':>5s}  {'edit σ in low half (top 3)':>26s}  {'W own: top, median':>18s}"
             f"  {'s_1 half: W → W+ΔW':>20s}  {'s_1 quarter: W → W+ΔW':>22s}"]
    for stem, delta in deltas.items():
        got = edited_var[stem] = {}
        for name, d in sorted(delta.items()):
            layer = next(i for i, p in mods.items() if name == f"{p}.weight")
            W = model.get_submodule(mods[layer]).weight.detach().double()
            Q = eigs[layer].Q
            low = Q[:, : Q.shape[0] // 2]
            sd = torch.linalg.svdvals(d.double() @ low)
            sw = torch.linalg.svdvals(W @ low)
            got[layer] = variants(W + d.double(), Q, eigs[layer].ev)
            before, after = base_var[layer], got[layer]
            lines.append(f"{stem:20s} {layer:5d}  {' '.join(f'{x:6.1f}' for x in sd[:3].tolist()):>26s}  "
                         f"{float(sw[0]):8.1f} {float(sw.median()):8.2f}  "
                         f"{before['s1 half']:8.1f} → {after['s1 half']:8.1f}  "
                         f"{before['s1 quarter']:9.1f} → {after['s1 quarter']:9.1f}")
    lines += ["", "statistics tried: each edited layer's value, then the largest over the unedited layers"]
    for stem, got in edited_var.items():
        lines.append(f"  {stem} (layers {', '.join(map(str, sorted(got)))})")
        for key in base_var[0]:
            rest = max(v[key] for layer, v in base_var.items() if layer not in got)
            lines.append(f"    {key:14s} " + " ".join(f"{got[layer][key]:5.1f}" for layer in sorted(got)) + f"   | unedited max {rest:5.1f}")
    for stem in [v for v in a.vocab.split(",") if v]:
        t0 = time.perf_counter()
        orig = {}
        with torch.no_grad():
            for n, d in (deltas[stem].items() if stem != "base" else []):
                p = model.get_parameter(n)
                orig[n] = p.detach().clone()
                p.add_(d)
        fire = vocab_fire(model, tok, mods, eigs)
        with torch.no_grad():
            for n, w in orig.items():
                model.get_parameter(n).copy_(w)
        edited = {next(i for i, p in mods.items() if n == f"{p}.weight") for n in orig}
        lines.append(f"vocabulary fire, {stem} ({time.perf_counter() - t0:.0f} s; * = edited layer): "
                     + " ".join(f"L{layer}{'*' if layer in edited else ''} {v:.2f} {t!r}" for layer, (v, t) in fire.items()))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
