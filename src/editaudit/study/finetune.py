"""Fine-tuning a model in memory for one study cell: full, LoRA or DoRA on chosen decoder layers.

A study cell trains with the product's loop (``mitigation.train``), so that what the study measures is what
``editaudit mitigate`` does. Only the framing differs: the model is already in memory (edited a moment ago),
the task is encoded once per study, the study measures the model at every evaluation through a callback, and
every arm stops at the same target validation loss (at or below it) or at a step cap. Adapters are merged
into the weights at the end, so the model that comes back is an ordinary model with changed weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInput
from ..mitigation.data import TaskData
from ..mitigation.plan import Plan
from ..mitigation.train import TASK_PIECES, StopRule, TrainConfig, encode, train

OnEval = Callable[[int, dict], None]   # (step, {"step": …, "val_loss": …, "val_acc": …})


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


def encode_task(task: TaskData, tokenizer, seq_len: int) -> _Encoded:
    return _Encoded(task, tokenizer, seq_len)


def layer_plan(model, method: str, layers: list[int]) -> Plan:
    """The study's plan: every parameter of the chosen decoder blocks for full fine-tuning; for LoRA/DoRA the
    weights of their linear modules (GPT-2's Conv1D included), which is all peft can adapt."""
    import torch
    from transformers.pytorch_utils import Conv1D

    block, n_layers = decoder_blocks(model)
    prefixes = tuple(block.format(i) + "." for i in layers)
    if method == "full":
        targets: list[str] = []
        params = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
    else:
        targets = [n for n, m in model.named_modules()
                   if n.startswith(prefixes) and isinstance(m, (torch.nn.Linear, Conv1D))]
        params = [f"{t}.weight" for t in targets]
    if not params:
        raise BadInput(f"no trainable {method} parameters in layers {layers}")
    numel = {n: p.numel() for n, p in model.named_parameters()}
    return Plan("study", f"layers {layers}", "all", method, n_layers, sorted(layers), params, targets,
                sum(numel[n] for n in params), sum(numel.values()))


def finetune(model, tokenizer, data: _Encoded, s: FtSettings, on_eval: OnEval | None = None) -> FtResult:
    """Train ``model`` in place (the same object comes back changed); ``on_eval`` sees every evaluation."""
    from ..models.loading import LoadedModel

    if not s.layers:
        raise BadInput("the layer strategy leaves no layer to fine-tune")
    t0 = time.perf_counter()
    plan = layer_plan(model, s.method, s.layers)
    cfg = TrainConfig(method=s.method, steps=s.max_steps, eval_every=s.eval_every, batch_size=s.batch_size,
                      seq_len=s.seq_len, lr=s.lr, head_lr=s.head_lr, weight_decay=s.weight_decay, rank=s.rank,
                      alpha=s.alpha, seed=s.seed)
    rule = StopRule(loss_at_most=s.target_loss)
    keep = {"step", "val_loss"} | ({"val_acc"} if TASK_PIECES[data.task.task].head else set())

    def shown(metrics: dict) -> dict:  # the study reports accuracy only for classification
        return {k: v for k, v in metrics.items() if k in keep}

    def emit(kind: str, metrics: dict) -> None:
        if kind == "eval" and on_eval is not None:  # model in eval mode, adapters still active
            on_eval(metrics["step"], shown(metrics))

    lm = LoadedModel(model, tokenizer, Path(getattr(model, "name_or_path", "") or "."))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        out = train(lm, plan, data.task, cfg, emit=emit, features=(data.train, data.val), stop=rule,
                    collect=False)
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
    if out.model is not model:  # the caller's object must carry the trained weights
        raise RuntimeError("fine-tuning returned a different model object")
    reason = "target" if rule.check(out.history[-1], out.history[0]) else "cap"
    return FtResult(out.steps, reason, [shown(m) for m in out.history], time.perf_counter() - t0)
