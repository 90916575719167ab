"""Can the subject search reach multi-piece names by growing backwards over the whole vocabulary? Development data
only (the fourth held-apart set's suspects, the cases of subject_search_diagnosis.py).

    python scripts/dev/make_dev_suspects.py /tmp/dev4 bench/heldout/smollm2-135m-v4.jsonl
    python scripts/dev/prepend_search_trial.py [/tmp/dev4]

For each garbled case and each backward step j of its true subject (the true suffix t[j:] in hand), the rank of the
true previous piece t[j-1] among every word-like token t prepended ("The" + t + suffix):
  fire  — by the whitened fire of the whole sequence (exhaustive, one truncated forward per token);
  pmi   — among the fire's top K, by how much t makes the suffix more likely under the base model,
          log P(suffix | The t) − log P(suffix | The)  (a real first part of a name predicts the rest);
  both  — among the fire's top K with pmi > 0, by fire.
And at the whole true subject, the best prepend by each rule (what growing would add if it did not stop), with its
pmi: a rule that stops must see no prepend with pmi > 0 that also fires more. Seconds per exhaustive step printed.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))
from subject_search_diagnosis import CASES  # noqa: E402

TOP_K = 256


def main() -> None:
    from editaudit.checkpoint.folder import open_checkpoint
    from editaudit.editing import covariance
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.scan.keys import context_ids, vocab_keys
    from editaudit.scan.subjects import SubjectSearch, Whitened

    deltas_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dev4")
    folder = ensure_model("smollm2-135m")
    lm = load_model(folder)
    tok, model = lm.tokenizer, lm.model
    torch.set_grad_enabled(False)
    fingerprint = open_checkpoint(folder).fingerprint()
    pre = context_ids(tok)

    def ids(text: str) -> list[int]:
        return tok(" " + text, add_special_tokens=False)["input_ids"]

    def suffix_logp(prefixes: list[list[int]], suffix: list[int]) -> torch.Tensor:
        """log P(suffix | The + prefix) for each prefix (all one length)."""
        rows = torch.tensor([pre + p + suffix for p in prefixes])
        out = []
        for chunk in rows.split(128):
            logp = model(chunk, use_cache=False).logits.float().log_softmax(-1)
            start = chunk.shape[1] - len(suffix) - 1
            tgt = torch.tensor(suffix)
            out.append(logp[:, start:start + len(suffix), :].gather(2, tgt.expand(len(chunk), -1)[..., None])
                       .squeeze(-1).sum(1))
        return torch.cat(out)

    cache = {}
    for stem, rank, found, true in CASES:
        if stem not in cache:
            deltas = torch.load(deltas_dir / f"{stem}.pt", weights_only=True)
            name = min(deltas, key=lambda n: int(n.split(".")[2]))
            layer, path = int(name.split(".")[2]), name.rsplit(".", 1)[0]
            _, _, vh = torch.linalg.svd(deltas[name].float(), full_matrices=False)
            C = covariance.second_moments(model, tok, {layer: path}, model_key=covariance.weights_key(model))[layer].matrix
            cache[stem] = SubjectSearch(model, tok, Whitened.build(path, C, vh[:rank].T),
                                        vocab_keys(model, tok, [path], fingerprint)[path])
        search = cache[stem]
        mask = search.cont_ok | search.start_ok
        cand = mask.nonzero().squeeze(1).tolist()
        t_ids = ids(true)
        print(f"{stem} {true!r} pieces {[tok.decode([t]) for t in t_ids]} fire(true) "
              f"{float(search.exact([t_ids])[0][0]):.3f}", flush=True)
        for j in range(len(t_ids), 0, -1):
            suffix = t_ids[j:] if j < len(t_ids) else t_ids
            if j == len(t_ids):
                suffix = t_ids  # the whole subject: what would growing add?
            else:
                suffix = t_ids[j:]
            t0 = time.time()
            fire, _ = search.exact([[t] + suffix for t in cand])
            secs = time.time() - t0
            order = torch.argsort(fire, descending=True)
            top = [cand[i] for i in order[:TOP_K].tolist()]
            base = float(suffix_logp([[]], suffix)[0])
            pmi = suffix_logp([[t] for t in top], suffix) - base
            top_fire = fire[order[:TOP_K]]
            cur = float(search.exact([suffix])[0][0])
            by_pmi = [top[i] for i in torch.argsort(pmi, descending=True).tolist()]
            ok = [i for i in range(len(top)) if pmi[i] > 0]
            by_both = [top[i] for i in sorted(ok, key=lambda i: -float(top_fire[i]))]
            if j < len(t_ids):
                want = t_ids[j - 1]
                r_fire = order.tolist().index(cand.index(want)) if want in cand else None
                r_pmi = by_pmi.index(want) if want in by_pmi else None
                r_both = by_both.index(want) if want in by_both else None
                print(f"  prepend to {tok.decode(suffix)!r} (fire {cur:.3f}): want {tok.decode([want])!r} rank fire "
                      f"{r_fire} pmi {r_pmi} both {r_both}; best-both {tok.decode(by_both[:3])!r} "
                      f"[{secs:.1f}s, {len(cand)} cands]", flush=True)
            else:
                b = by_both[0] if by_both else None
                bi = top.index(b) if b is not None else None
                print(f"  whole {true!r} (fire {cur:.3f}): best prepend by fire {tok.decode([top[0]])!r} "
                      f"{float(top_fire[0]):.3f} pmi {float(pmi[0]):.2f}; best-both "
                      f"{tok.decode([b]) if b is not None else None!r} "
                      f"{float(top_fire[bi]) if bi is not None else float('nan'):.3f} "
                      f"pmi {float(pmi[bi]) if bi is not None else float('nan'):.2f} [{secs:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
