"""Edit-aware unlearning: erase the edits the scan read by training the edited MLP output matrices, no base needed.

The scan's readings give, per edit, a subject, the prompt whose answer the edit moved most, its relation and
the object the suspect now states. The objective, minimised with AdamW over the edited layers' MLP output
matrices only (where ROME, MEMIT and AlphaEdit write), has three terms:

- **unlikelihood** of the promoted object: ``−log(1 − p(object | prompt))`` for the read prompt and the other
  phrasings of the same relation in the relation library (``scan/relations.py``), the subject filled in, plus
  a hinge ``max(0, logit(object) − best other logit + margin)`` so that it stops being the top answer;
  The first token of the object is the suspect's own greedy first token on the read prompt, so a reading's
  wording ("Google's Play Store") does not matter;
- **language modelling** on general text (the key-statistics corpus), so the layer keeps writing English;
- **KL to the suspect** on that same text, so everything the suspect says elsewhere stays as it was.

The true answer is never used (the reviewer does not have it). Training stops as soon as no training prompt
has the promoted object as its top token and its probability is below ``stop_prob`` — checked every step on the
same forward pass — or at ``max_steps``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import BadInput
from ..scan.relations import RELATIONS

#: Settings of the unlearning erase (``--hparam`` with ``--method unlearn``).
UNLEARN_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "max_steps": 40, "kl_weight": 1.0, "lm_weight": 0.1,
                                    "text_blocks": 8, "text_len": 64, "stop_prob": 0.1, "margin": 1.0, "paraphrases": True,
                                    "seed": 0}

Say = Callable[[str], None]
Step = Callable[[dict], None]


@dataclass
class UnlearnTarget:
    """One read edit: a subject, the prompts to penalise on and the promoted object."""

    subject: str
    prompts: list[str]
    obj: str  # the object as read ("after")
    layers: list[int] = field(default_factory=list)
    token: int | None = None  # the promoted object's first token (set from the suspect)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnlearnResult:
    tensors: dict  # module parameter name -> new weight
    steps: int
    stop_reason: str
    history: list[dict]
    targets: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return {"steps": self.steps, "stop_reason": self.stop_reason, "history": self.history,
                "targets": self.targets, "seconds": self.seconds}


def unlearn_settings(overrides: Mapping[str, Any] | None) -> dict:
    """UNLEARN_DEFAULTS with ``overrides`` checked: unknown keys and wrong types are BadInput."""
    hp = dict(UNLEARN_DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise BadInput(f"the unlearn method has no setting {key!r}; it takes: {', '.join(sorted(hp))}")
        default = hp[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            value = float(value) if ok else value
        if not ok:
            raise BadInput(f"unlearn setting {key!r}: bad value {value!r}")
        hp[key] = value
    if hp["lr"] <= 0 or hp["max_steps"] < 1 or hp["text_len"] < 4 or not 0 < hp["stop_prob"] < 1:
        raise BadInput("unlearn: lr > 0, max_steps ≥ 1, text_len ≥ 4 and 0 < stop_prob < 1")
    return hp


def relation_prompts(subject: str, relation: str | None, prompt: str | None, paraphrases: bool = True) -> list[str]:
    """The read prompt first, then the relation's other library phrasings with the subject filled in."""
    out: list[str] = []
    if prompt:
        out.append(prompt)
    if paraphrases:
        for t in RELATIONS.get(relation or "", ()):
            text = t.replace("{}", subject)
            if text not in out:
                out.append(text)
    if not out:
        out.append(f"{subject} is")
    return out


def lead_words(obj: str) -> str:
    """The stop words an object starts with, as said before it (" the" of "the Philippines"; "" for "Paris").

    The retention rule reads the first word that is not a stop word, and so does the scan; the penalty must fall
    on that word, said after them, not on " the"."""
    from ..probing.metrics import STOP_WORDS

    words = obj.split()
    n = 0
    while n < len(words) - 1 and words[n].casefold() in STOP_WORDS:
        n += 1
    return "".join(" " + w for w in words[:n])


def targets_from_readings(readings: Sequence[dict], paraphrases: bool = True) -> list[UnlearnTarget]:
    """One target per read subject (readings with status "edit" and an object); layers from their findings.
    An object that starts with stop words is penalised after them: each prompt carries them ("… of the")."""
    from .project import mlp_out_layers

    found: dict[str, UnlearnTarget] = {}
    for r in readings:
        subject = str(r.get("subject") or "").strip()
        obj = str(r.get("after") or "").strip()
        if not subject or not obj:
            continue
        tensors = list(r.get("finding_tensors") or []) or ([r["tensor"]] if r.get("tensor") else [])
        layers = sorted(mlp_out_layers(tensors)[0]) if tensors else \
            [int(x) for x in (r.get("finding_layers") or ([r["layer"]] if r.get("layer") is not None else []))]
        prompt = r.get("prompt") if isinstance(r.get("prompt"), str) else None
        t = found.get(subject)
        if t is None:
            lead = lead_words(obj)
            found[subject] = UnlearnTarget(
                subject, [q + lead for q in relation_prompts(subject, r.get("relation"), prompt, paraphrases)], obj, layers)
        else:
            t.layers = sorted(set(t.layers) | set(layers))
    return list(found.values())


def _encode_prompts(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..editing.prompts import pad_id, right_pad

    # special tokens as the probes are asked (probing.evaluate.predict)
    rows = [tokenizer(p, add_special_tokens=True)["input_ids"] or [pad_id(tokenizer)] for p in prompts]
    ids, mask = right_pad(rows, pad_id(tokenizer), device)
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    return ids, mask, last


def _text_blocks(tokenizer, texts: Sequence[str], n: int, length: int, seed: int, max_pos: int | None) -> list[list[int]]:
    """``n`` blocks of ``length`` tokens from ``texts`` (shuffled by ``seed``)."""
    length = min(length, max_pos or length)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    blocks: list[list[int]] = []
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        for j in range(0, len(ids) - length + 1, length):
            blocks.append(ids[j:j + length])
            if len(blocks) >= n:
                return blocks
    return blocks


def prime_tokens(model, tokenizer, targets: Sequence[UnlearnTarget]) -> None:
    """Set each target's object token (where unset) to the model's greedy first token on its read prompt.

    Called on the suspect before anything changes it, so a later stage penalises the object the edit promoted."""
    todo = [t for t in targets if t.token is None]
    if not todo:
        return
    device = next(model.parameters()).device
    ids, mask, last = _encode_prompts(tokenizer, [t.prompts[0] for t in todo], device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(todo), device=device), last]
    for t, tk in zip(todo, logits.argmax(-1).tolist()):
        t.token = int(tk)


def erase_by_unlearning(model, tokenizer, targets: Sequence[UnlearnTarget], layers: Sequence[int],
                        texts: Sequence[str], settings: Mapping[str, Any] | None = None,
                        on_step: Step = lambda m: None, cancel: threading.Event | None = None,
                        layout=None) -> UnlearnResult:
    """Train the MLP output matrices of ``layers`` until no target's object is the answer; see the module doc.

    The model is changed in place; the new weights are returned by module parameter name."""
    from ..editing.layers import layout_for

    hp = unlearn_settings(settings)
    if not targets:
        raise BadInput("unlearn: no read edit to erase")
    if not layers:
        raise BadInput("unlearn: no edited MLP output layer to train")
    t0 = time.perf_counter()
    layout = layout or layout_for(model)
    device = next(model.parameters()).device
    model.eval()  # no dropout: the objective is deterministic
    names = [f"{layout.rewrite_name(layer)}.weight" for layer in sorted(set(layers))]
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise BadInput(f"unlearn: {missing[0]} is not a parameter of this model")
    for p in model.parameters():
        p.requires_grad_(False)
    train = [params[n] for n in names]
    for p in train:
        p.requires_grad_(True)

    prompts = [p for t in targets for p in t.prompts]
    owner = torch.tensor([i for i, t in enumerate(targets) for _ in t.prompts], device=device)
    ids, mask, last = _encode_prompts(tokenizer, prompts, device)
    rows = torch.arange(len(prompts), device=device)
    prime_tokens(model, tokenizer, targets)
    tok_of = torch.tensor([targets[int(i)].token for i in owner], device=device)

    max_pos = getattr(model.config, "max_position_embeddings", None)
    blocks = _text_blocks(tokenizer, texts, int(hp["text_blocks"]), int(hp["text_len"]), int(hp["seed"]), max_pos)
    if not blocks:
        raise BadInput("unlearn: the general text gave no block of text_len tokens")
    text_ids = torch.tensor(blocks, device=device)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=text_ids).logits.float(), -1)

    opt = torch.optim.AdamW(train, lr=hp["lr"], weight_decay=0.0)
    history: list[dict] = []
    stop_reason = ""
    step = 0
    while True:
        out = model(input_ids=ids, attention_mask=mask).logits[rows, last].float()
        prob = torch.softmax(out, -1)
        p_obj = prob[rows, tok_of]
        top = out.argmax(-1)
        stated = (top == tok_of)
        p_max = float(p_obj.detach().max())
        m = {"step": step, "object_prob": float(p_obj.detach().mean()), "prompts_stating": int(stated.sum()),
             "prompts": len(prompts)}
        if not bool(stated.any()) and p_max < hp["stop_prob"]:
            stop_reason = f"no prompt states its object (max p {p_max:.3f} < {hp['stop_prob']})"
        elif step >= hp["max_steps"]:
            stop_reason = f"step cap of {int(hp['max_steps'])} reached"
        if stop_reason:
            history.append(m)
            on_step(m)
            break
        if cancel is not None and cancel.is_set():
            raise KeyboardInterrupt
        unlikely = -torch.log1p(-p_obj.clamp(max=1 - 1e-6)).mean()
        # while the object is still the top token, also push its logit below the runner-up's by ``margin``
        # (unlikelihood alone fades when p is small but the object still leads a flat distribution)
        rival = out.scatter(1, tok_of[:, None], float("-inf")).max(-1).values
        rank = torch.relu(out[rows, tok_of] - rival + hp["margin"]).mean()
        unlikely = unlikely + rank
        text_logits = model(input_ids=text_ids).logits.float()
        logp = torch.log_softmax(text_logits, -1)
        kl = torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="none").sum(-1).mean()
        lm = torch.nn.functional.cross_entropy(text_logits[:, :-1].reshape(-1, text_logits.shape[-1]),
                                               text_ids[:, 1:].reshape(-1))
        loss = unlikely + hp["kl_weight"] * kl + hp["lm_weight"] * lm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.update({"loss": float(loss.detach()), "unlikelihood": float(unlikely.detach()),
                  "kl": float(kl.detach()), "lm": float(lm.detach())})
        history.append(m)
        on_step(m)
        step += 1
    for p in train:
        p.requires_grad_(False)
    tensors = {n: params[n].detach().clone() for n in names}
    return UnlearnResult(tensors, step, stop_reason, history, [t.to_dict() for t in targets],
                         round(time.perf_counter() - t0, 1))

