"""Selective fine-tuning: full, LoRA or DoRA on exactly the planned parameters, with evaluations.

The loop is deliberately plain so that every step is reproducible and resumable:

- batch order and dropout are functions of (seed, step), so a resumed run takes the same steps as an
  uninterrupted one;
- at every evaluation the resumable state (trainable tensors, AdamW moments and step, metric history)
  is written atomically as safetensors + JSON (nothing is pickled);
- stopping rules are checked at evaluations: validation loss below ``stop_loss``, validation accuracy
  above ``stop_acc``, or the step budget;
- it runs through ``accelerate`` (one process on CPU or one GPU; several GPUs under
  ``accelerate launch``, each process taking its share of every batch, the main one evaluating).

LoRA/DoRA adapters (peft) are merged into the weights at the end; the outputs of the merged model
are checked against the adapter model's on a validation batch.
"""

from __future__ import annotations

import json
import math
import random
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_dir
from ..errors import BadInput
from ..models import families
from .data import TaskData, chat_template_of, render_chat
from .plan import Plan

Emit = Callable[[str, dict], None]
Evaluate = Callable[[Any, Any], dict]  # (model, tokenizer) -> metrics


@dataclass
class TrainConfig:
    method: str = "full"  # full | lora | dora
    steps: int = 50
    eval_every: int = 10
    batch_size: int = 8
    seq_len: int = 128
    lr: float | None = None  # default: 5e-5 for lm, 2e-5 for the other tasks
    head_lr: float = 1e-3  # the new classification head starts from scratch
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    stop_loss: float | None = None
    stop_acc: float | None = None
    stop_loss_drop: float | None = None  # stop once validation loss is this share below its value at step 0
    rank: int = 8
    alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # LoRA/DoRA: module-name suffixes narrowing the plan's modules
    grad_clip: float | None = 1.0
    seed: int = 0

    def learning_rate(self, task: str) -> float:
        return self.lr if self.lr is not None else TASK_PIECES[task].lr

    def check(self) -> None:
        if self.method not in ("full", "lora", "dora"):
            raise BadInput(f"method must be full, lora or dora, not {self.method!r}")
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1 or self.seq_len < 4:
            raise BadInput("steps, eval-every and batch size must be ≥ 1 and the sequence length ≥ 4")
        if self.rank < 1 or self.alpha <= 0:
            raise BadInput("LoRA rank must be ≥ 1 and alpha > 0")
        if self.stop_acc is not None and not 0 <= self.stop_acc <= 1:
            raise BadInput("--stop-acc is a fraction between 0 and 1")
        if self.stop_loss_drop is not None and not 0 < self.stop_loss_drop < 1:
            raise BadInput("the relative loss drop is a fraction between 0 and 1")

    def key(self) -> dict:
        """What must match for a run to be resumed (the budget and stopping rules may change)."""
        d = asdict(self)
        for k in ("steps", "stop_loss", "stop_acc", "stop_loss_drop", "eval_every"):
            d.pop(k)
        return d


@dataclass
class StopRule:
    """When a run has reached its target, checked at every evaluation (one rule for fresh and resumed runs).

    ``loss_below`` / ``acc_above`` are absolute; ``loss_drop`` is relative to the validation loss before the
    first step (0.1: stop once it is 10% lower), so one preset fits any model and data."""

    loss_below: float | None = None
    acc_above: float | None = None
    loss_drop: float | None = None
    loss_at_most: float | None = None  # inclusive: a study's equal-impact target may be met exactly at step 0

    @classmethod
    def of(cls, cfg: "TrainConfig") -> "StopRule":
        return cls(cfg.stop_loss, cfg.stop_acc, cfg.stop_loss_drop)

    def target_loss(self, first: dict | None) -> float | None:
        """The loss to go below: the absolute one, or the relative drop from ``first`` (the step-0 metrics)."""
        targets = [x for x in (self.loss_below,) if x is not None]
        if self.loss_drop is not None and first is not None and "val_loss" in first:
            targets.append(first["val_loss"] * (1 - self.loss_drop))
        return min(targets) if targets else None

    def check(self, metrics: dict, first: dict | None) -> str | None:
        """Why to stop at ``metrics`` (None: go on)."""
        target = self.target_loss(first)
        if target is not None and metrics.get("val_loss", math.inf) < target:
            how = f" ({self.loss_drop:.0%} below the start)" if self.loss_drop is not None and target != self.loss_below else ""
            return f"validation loss {metrics['val_loss']:.4f} < {target:.4f}{how}"
        if self.loss_at_most is not None and metrics.get("val_loss", math.inf) <= self.loss_at_most:
            return f"validation loss {metrics['val_loss']:.4f} ≤ {self.loss_at_most:.4f}"
        if self.acc_above is not None and metrics.get("val_acc", -1.0) > self.acc_above:
            return f"validation accuracy {metrics['val_acc']:.3f} > {self.acc_above}"
        return None

    @property
    def empty(self) -> bool:
        return all(x is None for x in (self.loss_below, self.acc_above, self.loss_drop, self.loss_at_most))


#: Per-task stopping targets of an equal-impact comparison (``--compare-full`` without --stop-loss/--stop-acc):
#: the full arm trains until it meets its task's target; the other arms then train to what it reached.
#: Language tasks stop on a relative drop of validation loss (a fixed loss does not carry across models),
#: classification and facts on validation accuracy.
TASK_STOP: dict[str, StopRule] = {"lm": StopRule(loss_drop=0.05), "sft": StopRule(loss_drop=0.10),
                                  "facts": StopRule(acc_above=0.5), "sentiment": StopRule(acc_above=0.9)}


@dataclass
class TrainOutcome:
    tensors: dict  # checkpoint tensor name -> final value (merged for LoRA/DoRA)
    history: list[dict]  # one entry per evaluation: {"step", metrics...}
    steps: int
    stop_reason: str
    extra_files: dict[str, bytes] = field(default_factory=dict)  # e.g. the classification head
    merge_check: float | None = None  # max |logit difference| adapter vs merged model
    resumed_from: int | None = None
    model: Any = None  # the trained (merged) model, for final verification


class Interrupted(KeyboardInterrupt):
    """Raised when the cancel event is set; behaves like Ctrl-C for every caller."""


# -- encoding -----------------------------------------------------------------------------------

def _label_from(offsets: list[tuple[int, int]], boundary: int) -> list[bool]:
    """Tokens that end after ``boundary`` (characters) are answer tokens."""
    return [end > boundary and end > start for start, end in offsets]


def encode(task: TaskData, tokenizer, seq_len: int) -> tuple[list[dict], list[dict]]:
    """Token features of the train and validation examples.

    Prose is cut into blocks of ``seq_len`` tokens; validation keeps at most one block per validation
    example, so that ``val_size`` bounds the cost of an evaluation for every task.
    """
    val = _encode(task, task.val, tokenizer, seq_len)[: len(task.val)]
    return _encode(task, task.train, tokenizer, seq_len), val


def _encode_prose(examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
    """lm: each text cut into blocks of ``seq_len`` tokens, every token labelled."""
    feats: list[dict] = []
    eos = tokenizer.eos_token_id
    for e in examples:
        ids = tokenizer(e["text"], add_special_tokens=False)["input_ids"]
        ids = ids + ([eos] if eos is not None else [])
        for i in range(0, len(ids), seq_len):
            block = ids[i:i + seq_len]
            if len(block) >= 8:
                feats.append({"input_ids": block, "labels": list(block)})
    return feats


def _encode_labelled(examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
    """sentiment: the text and its class."""
    feats: list[dict] = []
    for e in examples:
        ids = tokenizer(e["text"], truncation=True, max_length=seq_len)["input_ids"]
        if ids:
            feats.append({"input_ids": ids, "label": int(e["label"])})
    return feats


def _window_start(is_answer: list[bool], seq_len: int) -> int:
    """Where a ``seq_len`` window over a too-long example starts: the answer's first tokens must be inside it, so
    a long preamble (a chat template's system prompt) is cut from the left, keeping up to half the window of the
    text just before the answer."""
    n = len(is_answer)
    if n <= seq_len or True not in is_answer:
        return 0
    first = is_answer.index(True)
    return max(0, min(first - seq_len // 2, n - seq_len))


def _answer_only(rows: list[tuple[str, str, bool]], tokenizer, seq_len: int) -> list[dict]:
    """(prompt, full text, add special tokens) → features labelled on the answer tokens only."""
    feats: list[dict] = []
    for prompt, text, special in rows:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids, is_answer = enc["input_ids"], _label_from(enc["offset_mapping"], len(prompt))
        start = _window_start(is_answer, seq_len)
        ids, is_answer = ids[start:start + seq_len], is_answer[start:start + seq_len]
        labels = [t if a else -100 for t, a in zip(ids, is_answer)]
        if any(x != -100 for x in labels):
            feats.append({"input_ids": ids, "labels": labels})
    return feats


def _encode_facts(examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
    """facts: prompt + target, loss on the target."""
    return _answer_only([(e["prompt"], e["prompt"] + e["target"], True) for e in examples], tokenizer, seq_len)


def _encode_chat(examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
    """sft: the conversation in the model's chat template, loss on the last (assistant) message."""
    template, _ = chat_template_of(tokenizer)
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    rows = []
    for e in examples:
        text = render_chat(template, e["messages"], False, **specials)
        prompt = render_chat(template, e["messages"][:-1], True, **specials)
        if not text.startswith(prompt):  # templates that rewrite earlier turns: answer = last content
            prompt = text[: text.rfind(e["messages"][-1]["content"])]
        rows.append((prompt, text, False))
    return _answer_only(rows, tokenizer, seq_len)


@dataclass(frozen=True)
class TaskPieces:
    """What differs between tasks: how examples become features, whether a classification head sits on the
    last token, whether accuracy counts whole answers, and the default learning rate."""

    encode: Callable[[list[dict], Any, int], list[dict]]
    head: bool = False
    whole_answer: bool = False
    lr: float = 2e-5


TASK_PIECES: dict[str, TaskPieces] = {
    "lm": TaskPieces(_encode_prose, lr=5e-5),
    "sentiment": TaskPieces(_encode_labelled, head=True),
    "facts": TaskPieces(_encode_facts, whole_answer=True),
    "sft": TaskPieces(_encode_chat),
}


def _encode(task: TaskData, examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
    if task.task not in TASK_PIECES:
        raise BadInput(f"unknown task {task.task!r}")
    return TASK_PIECES[task.task].encode(examples, tokenizer, seq_len)


def collate(feats: list[dict], pad_id: int) -> dict:
    import torch

    width = max(len(f["input_ids"]) for f in feats)
    ids = torch.full((len(feats), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(feats), width), dtype=torch.long)
    batch: dict = {"input_ids": ids, "attention_mask": mask}
    if "labels" in feats[0]:
        labels = torch.full((len(feats), width), -100, dtype=torch.long)
        batch["labels"] = labels
    else:
        batch["label"] = torch.tensor([f["label"] for f in feats], dtype=torch.long)
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
        if "labels" in f:
            labels[i, :n] = torch.tensor(f["labels"])
    return batch


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of global step ``step`` (0-based): consecutive slices of per-epoch permutations."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = order[offset: offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


# -- the model with its task --------------------------------------------------------------------

def _task_module(lm, task: str, n_labels: int, seed: int):
    import torch
    from torch import nn

    class TaskModel(nn.Module):
        """The causal LM plus, for classification, a linear head on the final token's hidden state."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = lm
            self.task = task
            self.head = None
            if TASK_PIECES[task].head:
                torch.manual_seed(seed)
                self.head = nn.Linear(lm.config.get_text_config().hidden_size, n_labels)

        def logits(self, input_ids, attention_mask):
            """LM logits, or the head's class logits on the final token (in the head's dtype)."""
            if self.head is None:
                return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
            decoder = self.lm.get_decoder()
            if decoder is not None:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            else:  # transformers 4.56's get_decoder() gives None for Llama; the last hidden state is the same tensor
                hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                                 output_hidden_states=True).hidden_states[-1]
            last = attention_mask.sum(1) - 1
            feats = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            return self.head(feats.to(self.head.weight.dtype))

        def forward(self, input_ids, attention_mask, labels=None, label=None):
            if self.head is None:
                out = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
                return out.loss, out.logits
            logits = self.logits(input_ids, attention_mask)
            return nn.functional.cross_entropy(logits, label), logits

    return TaskModel()


def _name_map(model, ckpt_names: set[str]) -> dict[str, str]:
    """Model parameter name → checkpoint tensor name (checkpoints may omit the base-model prefix)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    out = {}
    for name, _ in model.named_parameters():
        if name in ckpt_names:
            out[name] = name
        elif prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in ckpt_names:
            out[name] = name[len(prefix) + 1:]
        elif prefix and f"{prefix}.{name}" in ckpt_names:
            out[name] = f"{prefix}.{name}"
    return out


def _lora_modules(model, plan: Plan, cfg: TrainConfig) -> list[str]:
    names = _name_map(model, set(plan.params))
    modules = sorted(n[: -len(".weight")] for n, c in names.items() if c in set(plan.params) and n.endswith(".weight"))
    if cfg.target_modules:
        wanted = set(cfg.target_modules)
        modules = [m for m in modules if m.rsplit(".", 1)[-1] in wanted or m.split(".", 3)[-1] in wanted]
        if not modules:
            raise BadInput(f"--target-modules {sorted(wanted)} matches none of the planned modules "
                           f"({', '.join(sorted({m.rsplit('.', 1)[-1] for m in names}))})")
    return modules


# -- metrics ------------------------------------------------------------------------------------

def validate(task_model, feats: list[dict], batch_size: int, pad_id: int, device) -> dict:
    """Validation loss and accuracy (token accuracy for lm/sft, exact answers for facts, classes for sentiment)."""
    import torch

    if not feats:
        return {}
    task_model.eval()
    tot_loss = tot_w = correct = count = 0.0
    with torch.inference_mode():
        for i in range(0, len(feats), batch_size):
            batch = {k: v.to(device) for k, v in collate(feats[i:i + batch_size], pad_id).items()}
            loss, logits = task_model(**batch)
            if "label" in batch:
                w = float(len(batch["label"]))
                correct += float((logits.argmax(-1) == batch["label"]).sum())
                count += w
            else:
                gold = batch["labels"][:, 1:]
                pred = logits[:, :-1].argmax(-1)
                mask = gold != -100
                w = float(mask.sum())
                if TASK_PIECES[task_model.task].whole_answer:
                    ok = ((pred == gold) | ~mask).all(1)
                    correct += float(ok.sum())
                    count += len(ok)
                else:
                    correct += float(((pred == gold) & mask).sum())
                    count += w
            tot_loss += float(loss) * w
            tot_w += w
    return {"val_loss": tot_loss / max(tot_w, 1.0), "val_acc": correct / max(count, 1.0)}


def known_mask(lm, tokenizer, feats: list[dict], batch_size: int = 16) -> list[bool]:
    """For answer-labelled features: does the model already produce the whole answer (teacher forcing)?"""
    import torch

    out: list[bool] = []
    model = lm.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for i in range(0, len(feats), batch_size):
            batch = {k: v.to(device) for k, v in collate(feats[i:i + batch_size], pad).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            gold = batch["labels"][:, 1:]
            mask = gold != -100
            ok = ((logits[:, :-1].argmax(-1) == gold) | ~mask).all(1)
            out.extend(bool(x) for x in ok)
    return out


# -- resumable state ----------------------------------------------------------------------------

def save_state(state_dir: Path, task_model, optimizer, step: int, info: dict) -> None:
    """Trainable tensors, AdamW moments and the step, written atomically (safetensors + JSON)."""
    from safetensors.torch import save_file

    trainable = {n: p.detach().cpu().contiguous() for n, p in task_model.named_parameters() if p.requires_grad}
    moments: dict = {}
    opt_steps: dict[str, float] = {}
    by_param = {id(p): n for n, p in task_model.named_parameters() if p.requires_grad}
    for p, st in optimizer.state.items():
        n = by_param.get(id(p))
        if n is None or not st:
            continue
        moments[f"{n}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        moments[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        opt_steps[n] = float(st["step"])
    with atomic_dir(state_dir, overwrite=True) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**info, "step": step, "opt_steps": opt_steps}, default=str))


def load_state(state_dir: Path, task_model, optimizer) -> dict:
    import torch
    from safetensors.torch import load_file

    info = json.loads((state_dir / "state.json").read_text())
    trainable = load_file(str(state_dir / "trainable.safetensors"))
    moments = load_file(str(state_dir / "optimizer.safetensors"))
    params = dict(task_model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing:
        raise BadInput(f"the saved state in {state_dir} does not match this run ({missing[0]} missing)")
    with torch.no_grad():
        for n, t in trainable.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    for n, s in info.get("opt_steps", {}).items():
        p = params[n]
        optimizer.state[p] = {
            "step": torch.tensor(float(s)),
            "exp_avg": moments[f"{n}::exp_avg"].to(p.device, p.dtype),
            "exp_avg_sq": moments[f"{n}::exp_avg_sq"].to(p.device, p.dtype),
        }
    return info


# -- the loop -----------------------------------------------------------------------------------

def train(lm, plan: Plan, task: TaskData, cfg: TrainConfig, evaluate: Evaluate | None = None,
          emit: Emit = lambda kind, data: None, cancel: threading.Event | None = None,
          state_dir: Path | None = None, resume: bool = False, run_info: dict | None = None,
          accelerator=None, features: tuple[list[dict], list[dict]] | None = None,
          stop: StopRule | None = None, collect: bool = True) -> TrainOutcome:
    """Fine-tune ``lm`` (a LoadedModel) on ``task`` changing only ``plan.params``; see the module doc.

    For callers that train many times in memory (the study): ``features`` are ``encode``'s (train, validation)
    features, so a task is tokenised once; ``stop`` replaces the config's stopping rules; ``collect=False``
    leaves ``tensors`` empty (no copy of the trained weights to the CPU). If the run fails or is interrupted,
    LoRA/DoRA adapters are removed again, so ``lm.model`` keeps its own modules.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    cfg.check()
    if cfg.method != plan.method:
        raise BadInput(f"the plan was made for {plan.method} but the run asks for {cfg.method}")
    acc = accelerator or Accelerator(cpu=lm.device.type == "cpu")
    model, tok = lm.model, lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    train_feats, val_feats = features if features is not None else encode(task, tok, cfg.seq_len)
    if not train_feats:
        raise BadInput(f"task {task.task}: no usable training example after tokenisation")
    if cfg.batch_size < acc.num_processes:
        raise BadInput(f"batch size {cfg.batch_size} is smaller than the {acc.num_processes} processes")

    planned = set(plan.params)
    names = _name_map(model, planned)
    if not set(names.values()) >= planned:
        lost = sorted(planned - set(names.values()))
        raise BadInput(f"planned tensors not found in the loaded model: {lost[:5]}")
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = None
    if cfg.method == "full":
        for n, p in model.named_parameters():
            if n in names:
                p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        modules = _lora_modules(model, plan, cfg)
        conv1d = families.of_model(model).conv1d
        lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=modules, use_dora=cfg.method == "dora", fan_in_fan_out=conv1d,
                          bias="none", init_lora_weights=True)
        torch.manual_seed(cfg.seed)
        with warnings.catch_warnings():  # peft calls a transformers API that warns about its own deprecation
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lcfg)
        model = peft_model

    try:
        task_model = _task_module(model, task.task, len(task.labels), cfg.seed)
        lr = cfg.learning_rate(task.task)
        groups = [{"params": [p for n, p in task_model.named_parameters()
                              if p.requires_grad and not n.startswith("head.")], "lr": lr}]
        if task_model.head is not None:
            groups.append({"params": list(task_model.head.parameters()), "lr": cfg.head_lr})
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        task_model.to(lm.device)

        step, history, resumed_from = 0, [], None
        info = {"key": json.dumps({**(run_info or {}), "config": cfg.key(), "data": task.fingerprint()},
                                  sort_keys=True)}
        if resume:
            if state_dir is None or not (state_dir / "state.json").exists():
                raise BadInput(f"nothing to resume: no saved state at {state_dir}")
            saved = json.loads((state_dir / "state.json").read_text())
            if saved.get("key") != info["key"]:
                raise BadInput(f"the saved state at {state_dir} belongs to a different run (checkpoint, plan, data "
                               "or hyper-parameters differ); start afresh without --resume")
            saved = load_state(state_dir, task_model, optimizer)
            step, history, resumed_from = int(saved["step"]), list(saved.get("history", [])), int(saved["step"])
            emit("resume", {"step": step})

        task_model, optimizer = acc.prepare(task_model, optimizer)
        inner = acc.unwrap_model(task_model)
        trainable = [p for p in inner.parameters() if p.requires_grad]
        cancelled = (lambda: cancel.is_set()) if cancel is not None else (lambda: False)

        def evaluation(at: int) -> tuple[dict, str | None]:
            metrics: dict = {"step": at}
            if acc.is_main_process:
                metrics.update(validate(inner, val_feats, cfg.batch_size, pad_id, acc.device))
                if evaluate is not None:
                    metrics.update(evaluate(inner.lm, tok))
            reason = rule.check(metrics, history[0] if history else metrics)
            reason = broadcast_object_list([reason])[0]
            return metrics, reason

        stop_reason = None
        rule = stop if stop is not None else StopRule.of(cfg)
        if not history:
            metrics, stop_reason = evaluation(0)
            history.append(metrics)
            emit("eval", metrics)
            if stop_reason is None and state_dir is not None and acc.is_main_process:
                save_state(state_dir, inner, optimizer, 0, {**info, "history": history})
        elif resumed_from is not None:
            stop_reason = rule.check(history[-1], history[0])

        while stop_reason is None and step < cfg.steps:
            if cancelled():
                raise Interrupted()
            task_model.train()
            idx = batch_indices(len(train_feats), cfg.batch_size, step, cfg.seed)
            mine = idx[acc.process_index::acc.num_processes]
            batch = {k: v.to(acc.device) for k, v in collate([train_feats[i] for i in mine], pad_id).items()}
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout depends on the step only: resumable
            loss, _ = task_model(**batch)
            acc.backward(loss)
            if cfg.grad_clip:
                acc.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            emit("step", {"step": step, "total": cfg.steps, "loss": float(loss.detach())})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics, stop_reason = evaluation(step)
                history.append(metrics)
                emit("eval", metrics)
                if state_dir is not None and acc.is_main_process and step < cfg.steps and stop_reason is None:
                    save_state(state_dir, inner, optimizer, step, {**info, "history": history})
        if stop_reason is None:
            stop_reason = f"step budget of {cfg.steps} reached"
        acc.wait_for_everyone()

        # merge adapters and collect the final values of the planned tensors
        inner.eval()
        merge_check = None
        final_model = inner.lm
        if peft_model is not None:
            probe = collate(val_feats[: cfg.batch_size] or train_feats[: cfg.batch_size], pad_id)
            probe = {k: v.to(acc.device) for k, v in probe.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                before = _outputs(inner, probe)
            final_model = peft_model.merge_and_unload()
            peft_model = None
            inner.lm = final_model
            with torch.inference_mode():
                after = _outputs(inner, probe)
            merge_check = float((before - after).abs().max())
        tensors = {}
        if collect:
            params = dict(final_model.named_parameters())
            tensors = {c: params[n].detach().cpu() for n, c in _name_map(final_model, planned).items()}
        extra = {}
        if inner.head is not None:
            from safetensors.torch import save as save_bytes

            extra["classifier_head.safetensors"] = save_bytes({k: v.detach().cpu().contiguous()
                                                              for k, v in inner.head.state_dict().items()})
            extra["classifier_head.json"] = json.dumps({
                "labels": task.labels, "input": "final token's last hidden state (after the final norm)",
                "in_features": inner.head.in_features, "out_features": inner.head.out_features}, indent=2).encode()
        return TrainOutcome(tensors, history, step, stop_reason, extra, merge_check, resumed_from, final_model)
    except BaseException:
        if peft_model is not None:  # not merged yet: take the adapters out of the caller's model
            peft_model.unload()
        raise


def _outputs(task_model, batch: dict):
    """What the task model outputs for a batch (the same path as training): LM or classifier logits."""
    return task_model.logits(batch["input_ids"], batch["attention_mask"]).float()
