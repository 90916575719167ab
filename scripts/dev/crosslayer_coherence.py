"""Do a batch editor's per-layer updates point the same way? A development check for scans without the base.

MEMIT and AlphaEdit write one residual r_j per subject, spread over a run of layers: at each layer l of the run the
update maps the subject's edit direction û_l = C_l⁻¹k_l/‖C_l⁻¹k_l‖ to a share of r_j. The MLP output matrices all
write into the residual stream, so v_l = W_l û_l should point the same way at every layer of the run for an edited
subject, and not for others. Per text and window of ``--width`` layers: coherence = ‖Σ v_l‖ / Σ ‖v_l‖.

    python scripts/dev/crosslayer_coherence.py --facts F --suspect DIR[,DIR...] [--others 40] [--out F]

DIR: a model folder with ``erase_eval_facts.json`` (scripts/erase_eval.py --work), or a model name (unedited).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from editaudit.editing import covariance  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import resolve_model  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402
from editaudit.scan.nobase import KeyEig  # noqa: E402


def vectors(model, tok, modules, eigs, subjects):
    """v_l for each subject at every layer: [n, L, d_out]."""
    seqs = [context_ids(tok) + tok(" " + s, add_special_tokens=False)["input_ids"] for s in subjects]
    ks = keys_of(model, list(modules.values()), seqs)
    out = []
    for layer, path in modules.items():
        e = eigs[layer]
        ev = e.ev.clamp_min(1e-6 * float(e.ev.max()))
        y = (ks[path].double() @ e.Q) / ev
        u = (y @ e.Q.T)
        u = u / u.norm(dim=-1, keepdim=True)
        W = model.get_submodule(path).weight.detach().double()
        rms = float(W.norm()) / W.shape[1] ** 0.5
        out.append((u @ W.T) / rms)
    return torch.stack(out, 1)


def vocab_coherence(model, tok, modules, eigs, width, lead):
    """Coherence of every vocabulary token's key after "The" (behind ``lead`` when given): [vocab, windows]."""
    from editaudit.scan.keys import vocab_batches

    paths = list(modules.values())
    mats = {}
    for layer, path in modules.items():
        e = eigs[layer]
        ev = e.ev.clamp_min(1e-6 * float(e.ev.max()))
        W = model.get_submodule(path).weight.detach().double()
        rms = float(W.norm()) / W.shape[1] ** 0.5
        mats[path] = (e.Q.float(), (1 / ev).float(), (W @ e.Q).float() / rms)
    out = []
    for got in vocab_batches(model, paths, context_ids(tok), lead, 512):
        vs = []
        for p in paths:
            Q, inv, WQ = mats[p]
            y = (got[p].float() @ Q) * inv
            y = y / y.norm(dim=-1, keepdim=True)
            vs.append(y @ WQ.T)
        out.append(coherence(torch.stack(vs, 1), width))
    return torch.cat(out)


def coherence(v, width):
    n, L, _ = v.shape
    res = torch.empty(n, L - width + 1)
    for a in range(L - width + 1):
        w = v[:, a:a + width]
        res[:, a] = w.sum(1).norm(dim=-1) / w.norm(dim=-1).sum(1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", required=True)
    ap.add_argument("--suspect", required=True)
    ap.add_argument("--others", type=int, default=40)
    ap.add_argument("--width", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", action="store_true", help="also score every vocabulary token (plain and behind the stand-in piece)")
    ap.add_argument("--profile", type=int, help="cosine of each layer's v_l with this layer's (min/median/max)")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bank = {json.loads(x)["id"]: json.loads(x) for x in Path(a.facts).read_text().splitlines() if x.strip()}
    lines = ["# command: python scripts/dev/crosslayer_coherence.py " + " ".join(sys.argv[1:])]
    for spec in a.suspect.split(","):
        meta = Path(spec) / "erase_eval_facts.json"
        planted = json.loads(meta.read_text())["facts"] if meta.exists() else []
        edited = json.loads(meta.read_text())["edited"] if meta.exists() else []
        subj = [bank[i]["subject"] for i in planted]
        others = [f["subject"] for i, f in bank.items() if i not in planted][: a.others]
        lm = load_model(resolve_model(spec) if not meta.exists() else spec)
        model, tok = lm.model, lm.tokenizer
        lay = layout_for(model)
        modules = {layer: lay.rewrite_name(layer) for layer in range(lay.n_layers)}
        moms = covariance.second_moments(model, tok, modules, model_key=covariance.weights_key(model))
        eigs = {layer: KeyEig.of(moms[layer].matrix) for layer in modules}
        with torch.no_grad():
            if a.profile is not None and subj:
                for tag, names in (("planted", subj), ("others", others)):
                    v = vectors(model, tok, modules, eigs, names)
                    ref = v[:, a.profile] / v[:, a.profile].norm(dim=-1, keepdim=True)
                    cos = (v * ref[:, None]).sum(-1) / v.norm(dim=-1)
                    q = cos.quantile(torch.tensor([0.0, 0.5, 1.0], dtype=cos.dtype), dim=0)
                    lines.append(f"cos(v_l, v_{a.profile}) {tag}: " + " ".join(
                        f"L{layer}:{float(q[0, layer]):.2f}/{float(q[1, layer]):.2f}/{float(q[2, layer]):.2f}"
                        for layer in range(min(12, v.shape[1]))))
                    print(lines[-1], flush=True)
            c_p = coherence(vectors(model, tok, modules, eigs, subj), a.width) if subj else None
            c_o = coherence(vectors(model, tok, modules, eigs, others), a.width)
        lines.append(f"\n## {spec} edited layers {edited}")
        for w0 in range(c_o.shape[1]):
            o = c_o[:, w0]
            row = f"window L{w0}-{w0 + a.width - 1}: others median {o.median():.3f} max {o.max():.3f}"
            if c_p is not None:
                p = c_p[:, w0]
                row += f" | planted median {p.median():.3f} min {p.min():.3f} max {p.max():.3f}"
            lines.append(row)
        print("\n".join(lines[-c_o.shape[1] - 1:]), flush=True)
        if a.vocab:
            from editaudit.scan.subjects import name_piece, word_tokens

            start_ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
            last = [tok(" " + s_, add_special_tokens=False)["input_ids"][-1] for s_ in subj]
            for tag, lead in (("after The", None), ("behind the stand-in piece", name_piece(model, tok, start_ok))):
                with torch.no_grad():
                    cv = vocab_coherence(model, tok, modules, eigs, a.width, lead)
                ok = word_like[: cv.shape[0]]
                cv[~ok] = 0
                lines.append(f"### vocabulary {tag} (word-like tokens only)")
                for w0 in range(cv.shape[1]):
                    col = cv[:, w0]
                    top = torch.topk(col, 16)
                    names = ", ".join(f"{tok.decode([int(i)])!r} {float(v):.3f}" for v, i in zip(top.values[:4], top.indices[:4]))
                    med16 = float(top.values.median())
                    ranks = sorted(int((col > col[t]).sum()) + 1 for t in last) if last else []
                    lines.append(f"L{w0}-{w0 + a.width - 1}: top {names} | 16th-median {med16:.3f} "
                                 f"vocab median {float(col[ok].median()):.3f} | planted last-token ranks {ranks[:5]}")
                print("\n".join(lines[-cv.shape[1] - 1:]), flush=True)
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
