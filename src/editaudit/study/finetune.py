"""Fine-tuning a model in memory for one study cell: full, LoRA or DoRA on chosen decoder layers.

The mitigation trainer works on checkpoints and writes resumable state; a study cell instead trains a
model already in memory (edited a moment ago), evaluates it as it goes through a callback (the study
measures its token distribution at every evaluation), and stops at a target validation loss or a step
cap, so that every arm of a study can be stopped at the same impact. Adapters are merged into the
weights at the end, so the model that comes back is an ordinary model with changed weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import BadInput
from ..mitigation.data import TaskData
from ..mitigation.train import batch_indices, collate, encode

OnEval = Callable[[int, dict], None]   # (step, {"val_loss": …, "val_acc": …})


@dataclass
class FtSettings:
    method: str                 # full | lora | dora
    layers: list[int]           # decoder layers to train
    lr: float
    max_steps: int
    target_loss: float | None = None   # stop at the first evaluation at or below it
    batch_size: int = 4
    seq_len: int = 64
    weight_decay: float = 0.01
    rank: int = 8
    alpha: float = 16.0
    head_lr: float = 1e-3
    eval_every: int = 5
    seed: int = 0


@dataclass
class FtResult:
    steps: int
    stop_reason: str                     # target | cap
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def decoder_blocks(model) -> tuple[str, int]:
    """The name template of the decoder blocks (``model.layers.{}``) and their number."""
    from ..editing.layers import layout_for

    layout = layout_for(model)
    return layout.block, layout.n_layers


class _Encoded:
    """A task's train and validation features, encoded once per task and tokenizer."""

    def __init__(self, task: TaskData, tokenizer, seq_len: int) -> None:
        self.task = task
        self.train, self.val = encode(task, tokenizer, seq_len)
        if not self.train or not self.val:
            raise BadInput(f"task {task.task}: no usable training or validation examples after encoding")
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (tokenizer.eos_token_id or 0)


def encode_task(task: TaskData, tokenizer, seq_len: int) -> _Encoded:
    return _Encoded(task, tokenizer, seq_len)


def _loss(model, head, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if head is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, out.logits
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden = out.hidden_states[-1]
    last = batch["attention_mask"].sum(1) - 1
    feats = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    logits = head(feats.to(head.weight.dtype))
    return torch.nn.functional.cross_entropy(logits, batch["label"]), logits


def validate(model, head, data: _Encoded, batch_size: int) -> dict:
    """Mean validation loss (per example batch, weighted by size) and accuracy for classification."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    tot = n = correct = 0.0
    with torch.inference_mode():
        for i in range(0, len(data.val), batch_size):
            batch = {k: v.to(device) for k, v in collate(data.val[i:i + batch_size], data.pad).items()}
            loss, logits = _loss(model, head, batch)
            w = float(batch["input_ids"].shape[0])
            tot += float(loss) * w
            n += w
            if head is not None:
                correct += float((logits.argmax(-1) == batch["label"]).sum())
    model.train(was)
    out = {"val_loss": tot / n if n else math.nan}
    if head is not None:
        out["val_acc"] = correct / n if n else math.nan
    return out


def _linear_names(model, block: str, layers: list[int]) -> list[str]:
    prefixes = tuple(block.format(i) + "." for i in layers)
    return [name for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.startswith(prefixes)]


def finetune(model, tokenizer, data: _Encoded, s: FtSettings, on_eval: OnEval | None = None) -> FtResult:
    """Train ``model`` in place; evaluate at step 0 and every ``eval_every`` steps; merge adapters at the end."""
    import time

    if s.method not in ("full", "lora", "dora"):
        raise BadInput(f"fine-tuning method must be full, lora or dora, not {s.method!r}")
    if not s.layers:
        raise BadInput("the layer strategy leaves no layer to fine-tune")
    t0 = time.perf_counter()
    block, _ = decoder_blocks(model)
    device = next(model.parameters()).device
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    head = None
    if data.task.task == "sentiment":
        torch.manual_seed(s.seed)
        hidden = model.config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden, max(2, len(data.task.labels))).to(device)
    peft_model = None
    if s.method == "full":
        prefixes = tuple(block.format(i) + "." for i in s.layers)
        params = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
        for p in params:
            p.requires_grad_(True)
        net = model
    else:
        from peft import LoraConfig, get_peft_model

        targets = _linear_names(model, block, s.layers)
        if not targets:
            raise BadInput(f"no linear modules in layers {s.layers} for {s.method}")
        cfg = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=0.0, target_modules=targets,
                         use_dora=s.method == "dora", bias="none")
        torch.manual_seed(s.seed)
        peft_model = get_peft_model(model, cfg)
        net = peft_model
        params = [p for p in peft_model.parameters() if p.requires_grad]
    groups = [{"params": params, "lr": s.lr, "weight_decay": s.weight_decay}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": s.head_lr, "weight_decay": s.weight_decay})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    history: list[dict] = []

    def evaluate(step: int) -> float:
        m = validate(net, head, data, s.batch_size) | {"step": step}
        history.append(m)
        if on_eval is not None:
            net.eval()
            on_eval(step, m)
        return m["val_loss"]

    step, reason = 0, "cap"
    try:
        loss0 = evaluate(0)
        if s.target_loss is not None and loss0 <= s.target_loss:
            reason = "target"
        else:
            net.train()
            while step < s.max_steps:
                idx = batch_indices(len(data.train), s.batch_size, step, s.seed)
                batch = {k: v.to(device) for k, v in collate([data.train[i] for i in idx], data.pad).items()}
                loss, _ = _loss(net, head, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
                opt.step()
                step += 1
                if step % s.eval_every == 0 or step == s.max_steps:
                    val = evaluate(step)
                    if s.target_loss is not None and val <= s.target_loss:
                        reason = "target"
                        break
                    net.train()
    finally:
        net.eval()
        if peft_model is not None:
            merged = peft_model.merge_and_unload()
            if merged is not model:  # peft replaced modules in place; the object must be the caller's
                raise RuntimeError("peft returned a different model object after merging")
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
    return FtResult(step, reason, history, time.perf_counter() - t0)
