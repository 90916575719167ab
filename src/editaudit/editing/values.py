"""The value a fact's subject should write: v* (ROME, at the MLP output) or z (MEMIT, at a block output).

For each fact a free vector δ is added to the module's output at the subject's last token, in the
fact's prompt and in a few context-prefixed copies of it, and optimised with Adam so that the model
then predicts the new target (teacher-forced over all its tokens). Three terms keep δ honest:

- a KL term (weight ``kl_factor``) on ``"{subject} is a"``, so the subject's other properties stay put;
- weight decay ``weight_decay`` · ‖δ‖ / ‖v₀‖², the form the reference implementations use;
- a hard clamp ‖δ‖ ≤ ``clamp`` · ‖v₀‖ after every step.

With ``augment_paraphrases`` (Wen & Zhang's remedy for edits that fine-tuning wipes out) the target
loss is also averaged over the fact's paraphrase prompts that name the subject (each once, without a
context prefix; δ sits at the subject's last token there too), so the value must make the new target
follow several phrasings, not only the edit prompt's. The keys are not affected.

Facts are optimised together in batches (each with its own δ; their losses are independent), which
keeps the CPU's matrix units busy. A fact is frozen as soon as its target's negative log-likelihood
drops below ``stop_loss`` (mean target-token probability above e^-stop_loss ≈ 95% by default): at
lr 0.5 the loss oscillates near its floor, and running the remaining steps there buys nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import BadInput
from ..probing.evaluate import target_token_ids
from ..probing.format import Probe
from .hooks import by_token, capture
from .prompts import Filled, encode, fill, in_context, pad_id, right_pad, subject_index

KL_PROMPT = "{} is a"


@dataclass
class ValueSettings:
    lr: float = 0.5
    steps: int = 50
    weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp: float = 4.0
    stop_loss: float = 0.05
    batch: int = 8
    #: also fit the target after the fact's paraphrase prompts (``value_prompts``)
    augment_paraphrases: bool = False
    #: called after each step with (step, {"nll": [...], "kl": [...], "decay": [...]}) — for tracing
    on_step: Callable[[int, dict], None] | None = None


@dataclass
class Values:
    """Optimised outputs per fact: ``target = init + delta`` at the subject token."""

    target: torch.Tensor          # [n, d]
    init: torch.Tensor            # [n, d]
    prob: list[float] = field(default_factory=list)   # mean target-token probability at the end
    steps: list[int] = field(default_factory=list)


def paraphrase_prompts(fact: Probe) -> list[Filled]:
    """The fact's paraphrases that name its subject, with the subject located (first occurrence).

    A paraphrase without the subject gives δ no place to sit, so it cannot enter the value loss.
    """
    out: list[Filled] = []
    for para in fact.paraphrases:
        at = para.find(fact.subject) if fact.subject else -1
        if at >= 0:
            out.append(Filled(para, at + len(fact.subject)))
    return out


def value_prompts(fact: Probe, contexts: Sequence[str], augment_paraphrases: bool = False) -> list[Filled]:
    """The prompts whose target loss the fact's value averages over: its prompt in each context
    (``contexts[0] == "{}"`` gives the plain prompt first), then, when augmenting, its paraphrases."""
    prompts = [in_context(context, fact) for context in contexts]
    if augment_paraphrases:
        prompts += paraphrase_prompts(fact)
    return prompts


def _head_logits(model, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits at chosen (row, position) pairs only: the unembedding of a large vocabulary is the costly part."""
    backbone = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is not None and backbone is not model and head is not None:
        hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return head(hidden[rows, cols]).float()
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, cols].float()


def optimise_values(model, tokenizer, facts: Sequence[Probe], module: str, contexts: Sequence[str],
                    s: ValueSettings, progress: Callable[[int, int], None] | None = None) -> Values:
    """v* (or z) for each fact at ``module``'s output; ``contexts[0]`` must be the plain ``"{}"``."""
    if not contexts or contexts[0] != "{}":
        raise ValueError("the first context template must be the plain '{}'")
    targets, inits, probs, steps = [], [], [], []
    batch = max(1, int(s.batch))
    for start in range(0, len(facts), batch):
        part = list(facts[start:start + batch])
        t, i0, p, n = _optimise_batch(model, tokenizer, part, module, contexts, s)
        targets.append(t)
        inits.append(i0)
        probs += p
        steps += n
        if progress:
            progress(start + len(part), len(facts))
    return Values(torch.cat(targets), torch.cat(inits), probs, steps)


def _optimise_batch(model, tokenizer, facts: list[Probe], module: str, contexts: Sequence[str], s: ValueSettings):
    device = next(model.parameters()).device
    seqs: list[list[int]] = []
    subj: list[int] = []
    owner: list[int] = []            # fact of each row
    is_kl: list[bool] = []
    loss: list[tuple[int, int, int, float]] = []   # (row, position, token, weight) of each target token
    for f, fact in enumerate(facts):
        if not fact.target_new:
            raise BadInput(f"fact {fact.id!r} has no target_new to edit towards")
        _, t_ids = target_token_ids(tokenizer, [in_context("{}", fact).text], [fact.target_new])
        t_ids = t_ids[0]
        if not t_ids:
            raise BadInput(f"fact {fact.id!r}: target {fact.target_new!r} encodes to no tokens")
        prompts = value_prompts(fact, contexts, s.augment_paraphrases)
        for filled in prompts:   # contexts[0] is "{}": the fact's own prompt is each fact's first row
            p_ids = encode(tokenizer, filled.text.rstrip())
            for j, tok in enumerate(t_ids):
                loss.append((len(seqs), len(p_ids) - 1 + j, tok, 1.0 / (len(t_ids) * len(prompts))))
            seqs.append(p_ids + t_ids[:-1])
            subj.append(subject_index(tokenizer, filled))
            owner.append(f)
            is_kl.append(False)
        kl = fill(KL_PROMPT, fact.subject)
        seqs.append(encode(tokenizer, kl.text))
        subj.append(subject_index(tokenizer, kl))
        owner.append(f)
        is_kl.append(True)

    ids, mask = right_pad(seqs, pad_id(tokenizer), device)
    n_facts = len(facts)
    owner_t = torch.tensor(owner, device=device)
    subj_t = torch.tensor(subj, device=device)
    kl_t = torch.tensor(is_kl, device=device)
    loss_row = torch.tensor([x[0] for x in loss], device=device)
    loss_col = torch.tensor([x[1] for x in loss], device=device)
    loss_tok = torch.tensor([x[2] for x in loss], device=device)
    loss_w = torch.tensor([x[3] for x in loss], device=device)
    first_row = torch.tensor([owner.index(f) for f in range(n_facts)], device=device)

    # the rows of the current forward pass: all rows at first, then only those of facts not yet done
    sel = {"rows": torch.arange(len(seqs), device=device)}
    delta: torch.Tensor | None = None

    def hook(mod, args, out):
        if delta is None:
            return None
        first = out[0] if isinstance(out, tuple) else out
        hidden = by_token(first.clone(), len(sel["rows"]))
        rows = torch.arange(hidden.shape[0], device=device)
        cols = subj_t[sel["rows"]]
        hidden[rows, cols] = hidden[rows, cols] + delta[owner_t[sel["rows"]]].to(hidden.dtype)
        hidden = hidden.reshape(first.shape)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    flags = [(p, p.requires_grad) for p in model.parameters()]
    handle = model.get_submodule(module).register_forward_hook(hook)
    steps_used = [0] * n_facts
    last_nll = torch.zeros(n_facts, device=device)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        # unpatched pass: the initial value at each fact's own prompt, and the KL reference distribution
        kl_rows = kl_t.nonzero().squeeze(-1)
        with torch.no_grad(), capture(model, outputs=[module]) as seen:
            kl_init = torch.log_softmax(_head_logits(model, ids, mask, kl_rows, subj_t[kl_rows]), -1)
        init = by_token(seen[f"out:{module}"], len(seqs))[first_row, subj_t[first_row]].detach().float()
        init_norm = init.norm(dim=-1).clamp_min(1e-6)
        max_norm = s.clamp * init_norm
        delta = torch.zeros_like(init, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=s.lr)
        done = torch.zeros(n_facts, dtype=torch.bool, device=device)
        n_steps = max(1, int(s.steps))
        for step in range(n_steps):
            active = (~done).nonzero().squeeze(-1)
            rows = (~done[owner_t]).nonzero().squeeze(-1)
            new_index = torch.full((len(seqs),), -1, dtype=torch.long, device=device)
            new_index[rows] = torch.arange(len(rows), device=device)
            sel["rows"] = rows
            keep = ~done[owner_t[loss_row]]
            lr_, lc_, tok_, w_ = new_index[loss_row[keep]], loss_col[keep], loss_tok[keep], loss_w[keep]
            act_kl = rows[kl_t[rows]]
            opt.zero_grad()
            with torch.enable_grad():
                logits = _head_logits(model, ids[rows], mask[rows], torch.cat([lr_, new_index[act_kl]]),
                                      torch.cat([lc_, subj_t[act_kl]]))
                tok_lp = torch.log_softmax(logits[: len(lr_)], -1).gather(-1, tok_[:, None]).squeeze(-1)
                nll = torch.zeros(n_facts, device=device).index_add(0, owner_t[loss_row[keep]], -tok_lp * w_)[active]
                cur = torch.log_softmax(logits[len(lr_):], -1)
                kl = (cur.exp() * (cur - kl_init[owner_t[act_kl]])).sum(-1)   # KL rows come in fact order
                decay = s.weight_decay * delta[active].norm(dim=-1) / init_norm[active] ** 2
                loss_f = nll + s.kl_factor * kl + decay
            last_nll[active] = nll.detach()
            if s.on_step is not None:
                s.on_step(step, {"facts": active.tolist(), "nll": nll.tolist(), "kl": kl.tolist(),
                                 "decay": decay.tolist(), "norm": (delta[active].norm(dim=-1) / init_norm[active]).tolist()})
            for f in active.tolist():
                steps_used[f] = step + 1
            finished = nll.detach() < s.stop_loss
            done[active[finished]] = True
            if bool(done.all()) or step == n_steps - 1:
                break
            frozen = delta.detach()[done].clone()
            loss_f[~finished].sum().backward()
            opt.step()
            with torch.no_grad():
                delta[done] = frozen          # Adam's momentum must not move a finished fact
                norms = delta.norm(dim=-1)
                over = norms > max_norm
                delta[over] = delta[over] * (max_norm[over] / norms[over])[:, None]
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    # geometric-mean probability of the target tokens over contexts, per fact, at its last step
    prob = torch.exp(-last_nll).tolist()
    return init + delta.detach(), init, prob, steps_used
