"""The mitigation wizard: goal, method, layers, task, data and stopping rule, preselected from the scan,
with the reason for each proposal and the exact plan (from the mitigation service) before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, RadioButton, RadioSet, Select, Static

from ..fmt import plain
from ..theme import ERROR, WARNING
from ..jobs import Job, Outcome, describe_error
from ..paths import FileSuggester, check_file, check_output_folder
from editaudit.mitigation.plan import Proposal, propose  # noqa: F401  (the plan's rules, not the app's)

GOALS = ("erase", "preserve")
METHODS = {"project": "projection erase (no base, no training)", "unlearn": "edit-aware unlearning (no base)",
           "project+unlearn": "projection, then unlearning", "full": "full fine-tuning", "lora": "LoRA",
           "dora": "DoRA", "revert": "surgical revert"}
ERASE_ONLY = ("project", "unlearn", "project+unlearn")
MODULES = {"all": "all matrices (+ norms)", "mlp": "MLP in and out", "mlp_out": "MLP output only",
           "attn": "attention only"}
TASKS = {"lm": "language modelling (prose)", "facts": "new facts", "sentiment": "sentiment (linear head)",
         "sft": "instruction SFT (chat template)"}


@dataclass
class MitigationRequest:
    """Everything the live run needs; turned into the service's options inside the worker thread."""

    suspect: str
    base: str | None
    out: Path
    goal: str = "erase"
    method: str = "full"
    revert: bool = False
    layers: str = "auto"
    modules: str = "all"
    task: str = "lm"
    data: Path | None = None
    steps: int = 50
    eval_every: int = 10
    stop_loss: float | None = None
    stop_acc: float | None = None
    lr: float | None = None
    batch_size: int = 8
    seq_len: int = 128
    val_size: int = 64
    probe_files: list[Path] = field(default_factory=list)
    overwrite: bool = False
    compare_full: bool = False

    def options(self):
        """The service's ``MitigationOptions`` (imports the mitigation code: call it off the UI thread)."""
        from editaudit.mitigation.service import MitigationOptions
        from editaudit.mitigation.train import TrainConfig
        from editaudit.probing.format import load_probes

        probes = []
        for path in self.probe_files:
            probes += load_probes(path, errors=[])
        cfg = TrainConfig(method="full" if self.revert or self.method in ERASE_ONLY else self.method, steps=self.steps, eval_every=self.eval_every,
                          batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr, stop_loss=self.stop_loss,
                          stop_acc=self.stop_acc)
        return MitigationOptions(
            base=self.base, out=self.out, method="full" if self.revert else self.method, layers=self.layers,
            modules=self.modules, task=self.task, data=self.data, val_size=self.val_size, train=cfg, probes=probes,
            compare_full=self.compare_full and not self.revert, revert=self.revert, overwrite=self.overwrite)


def default_out(suspect: str) -> Path:
    """``<suspect>-mitigated`` (numbered when taken), next to the suspect or else in the current folder."""
    path = Path(suspect).expanduser()
    parent = path.parent if path.parent.exists() else Path.cwd()
    stem = path.name or "model"
    for i in range(1, 1000):
        out = parent / (f"{stem}-mitigated" + (f"-{i}" if i > 1 else ""))
        if not out.exists():
            return out
    return parent / f"{stem}-mitigated"


class MitigateWizard(Screen[MitigationRequest | None]):
    BINDINGS = [
        Binding("ctrl+s", "run", "run", priority=True),
        Binding("ctrl+r", "preview", "refresh plan"),
        Binding("escape", "cancel", "back"),
    ]

    def __init__(self, doc: dict, probe_files: list[str] | None = None) -> None:
        super().__init__()
        self.doc = doc
        self.proposal = propose(doc)
        self.suspect = (doc.get("suspect") or {}).get("path", "")
        self.base = (doc.get("base") or {}).get("path")
        self.session_probes = [Path(p) for p in (probe_files or [])]
        self._generation = 0
        self._timer = None
        self.plan: dict | None = None  # the service's plan for the current choices, once worked out

    def compose(self) -> ComposeResult:
        p = self.proposal
        yield Header()
        with Horizontal(id="wizard-body"):
            with VerticalScroll(id="wizard"):
                yield Static(Text.assemble(("Mitigate ", "bold"), plain(self.suspect),
                                           ("\npreselected from the scan; each choice says why", "dim")))
                with Horizontal(classes="field"):
                    yield Label("goal")
                    with RadioSet(id="goal"):
                        for g in GOALS:
                            yield RadioButton(g, value=g == p.goal, name=g)
                yield Static(plain(p.why["goal"]), classes="why")
                with Horizontal(classes="field"):
                    yield Label("method")
                    with RadioSet(id="method"):
                        for key, name in METHODS.items():
                            yield RadioButton(name, value=key == p.method, name=key,
                                              disabled=key == "revert" and not self.base)
                yield Static(plain(p.why["method"]), classes="why")
                with Horizontal(classes="field"):
                    yield Label("layers")
                    yield Input(p.layers, id="layers", compact=True,
                                placeholder="auto | edited | non-edited | threshold:L | window:C:W | 3,4,7-9")
                with Horizontal(classes="field"):
                    yield Label("modules")
                    yield Select([(v, k) for k, v in MODULES.items()], value=p.modules, allow_blank=False,
                                 id="modules", compact=True)
                yield Static(plain(p.why["layers"] + " " + p.why["modules"]), classes="why")
                with Horizontal(classes="field"):
                    yield Label("task")
                    yield Select([(v, k) for k, v in TASKS.items()], value=p.task, allow_blank=False, id="task",
                                 compact=True)
                with Horizontal(classes="field"):
                    yield Label("data")
                    yield Input(placeholder="default dataset, or your .txt / .jsonl", id="data", compact=True,
                                suggester=FileSuggester((".txt", ".jsonl", ".json")))
                yield Static(plain(p.why["task"]), classes="why")
                with Horizontal(classes="field"):
                    yield Label("stopping")
                    yield Label("steps", classes="sub")
                    yield Input("50", id="steps", type="integer", compact=True, classes="num")
                    yield Label("eval every", classes="sub")
                    yield Input("10", id="eval-every", type="integer", compact=True, classes="num")
                    yield Label("loss <", classes="sub")
                    yield Input(id="stop-loss", type="number", compact=True, classes="num")
                    yield Label("acc >", classes="sub")
                    yield Input(id="stop-acc", type="number", compact=True, classes="num")
                yield Static(plain(p.why["stop"]), classes="why")
                with Horizontal(classes="field"):
                    yield Label("probes")
                    yield Input(", ".join(str(x) for x in self.session_probes), id="probes", compact=True,
                                placeholder="probe files with edited/intrinsic facts, comma-separated",
                                suggester=FileSuggester((".jsonl", ".json")))
                yield Static(plain(self._probe_why()), classes="why")
                with Horizontal(classes="field"):
                    yield Label("output")
                    yield Input(str(default_out(self.suspect)), id="out", compact=True)
                with Horizontal(classes="field"):
                    yield Label("")
                    yield Checkbox("overwrite", id="overwrite", compact=True)
                    yield Checkbox("also run full fine-tuning to compare", id="compare-full", compact=True)
                with Horizontal(classes="field"):
                    yield Label("advanced")
                    yield Label("batch", classes="sub")
                    yield Input("8", id="batch-size", type="integer", compact=True, classes="num")
                    yield Label("seq len", classes="sub")
                    yield Input("128", id="seq-len", type="integer", compact=True, classes="num")
                    yield Label("lr", classes="sub")
                    yield Input(id="lr", type="number", compact=True, classes="num", placeholder="default")
                    yield Label("val size", classes="sub")
                    yield Input("64", id="val-size", type="integer", compact=True, classes="num")
            with Vertical(id="plan-pane"):
                yield Static(Text("working out the plan…", style="dim"), id="plan-box")
                with Horizontal(classes="buttons"):
                    yield Button("Run", variant="primary", id="run")
                    yield Button("Back", id="back")
        yield Footer()

    def _probe_why(self) -> str:
        return ("edited facts (kind 'edited', with target_new) are measured for their new answer, intrinsic facts for "
                "the true one. Without a file, the edits recorded in the store for this checkpoint are tracked and the "
                "shipped intrinsic set stands for intrinsic knowledge; with neither, the run still reports how much "
                "of each edit is left in the weights.")

    def on_mount(self) -> None:
        self.sub_title = "mitigate: plan"
        self.query_one("#plan-box").border_title = "plan"
        self.action_preview()

    # -- reading the form ---------------------------------------------------------------------------
    def _radio(self, rid: str) -> str:
        b = self.query_one(f"#{rid}", RadioSet).pressed_button
        return b.name if b is not None and b.name else ""

    def _text(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value.strip()

    def request(self) -> tuple[MitigationRequest | None, list[str]]:
        problems: list[str] = []

        def number(wid: str, kind, label: str, minimum: float | None = None):
            raw = self._text(wid)
            if not raw:
                return None
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{label}: {raw!r} is not a number")
                return None
            if minimum is not None and value < minimum:
                problems.append(f"{label} must be ≥ {minimum}")
            return value

        method = self._radio("method") or "full"
        steps = number("steps", int, "steps", 1)
        eval_every = number("eval-every", int, "eval every", 1)
        batch = number("batch-size", int, "batch size", 1)
        seq = number("seq-len", int, "sequence length", 4)
        val = number("val-size", int, "validation size", 1)
        stop_loss = number("stop-loss", float, "stop loss")
        stop_acc = number("stop-acc", float, "stop accuracy")
        if stop_acc is not None and not 0 <= stop_acc <= 1:
            problems.append("stop accuracy is a fraction between 0 and 1")
        lr = number("lr", float, "learning rate")
        data = self._text("data")
        p = check_file(data, (".txt", ".jsonl", ".json"))
        if p:
            problems.append(f"data: {p}")
        probe_files = [Path(x.strip()).expanduser() for x in self._text("probes").split(",") if x.strip()]
        for f in probe_files:
            p = check_file(str(f), (".jsonl", ".json"))
            if p:
                problems.append(f"probes: {p}")
        overwrite = self.query_one("#overwrite", Checkbox).value
        p = check_output_folder(self._text("out"), overwrite)
        if p:
            problems.append(f"output: {p}")
        if method in ERASE_ONLY and (self._radio("goal") or "erase") != "erase":
            problems.append(f"method: {METHODS[method]} erases edits; choose goal erase or another method")
        if not self._text("layers"):
            problems.append("layers: required (auto, edited, non-edited, threshold:L, window:C:W or a list)")
        if problems:
            return None, problems
        return MitigationRequest(
            suspect=self.suspect, base=self.base, out=Path(self._text("out")).expanduser(),
            goal=self._radio("goal") or "erase", method="full" if method == "revert" else method,
            revert=method == "revert", layers=self._text("layers"),
            modules=str(self.query_one("#modules", Select).value), task=str(self.query_one("#task", Select).value),
            data=Path(data).expanduser() if data else None, steps=steps or 50, eval_every=eval_every or 10,
            stop_loss=stop_loss, stop_acc=stop_acc, lr=lr, batch_size=batch or 8, seq_len=seq or 128,
            val_size=val or 64, probe_files=probe_files, overwrite=overwrite,
            compare_full=self.query_one("#compare-full", Checkbox).value,
        ), []

    # -- the plan preview (the service's own plan and explanation) ----------------------------------------
    def _changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.4, self.action_preview)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self._changed()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._changed()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("layers",):
            self._changed()

    def action_preview(self) -> None:
        self._generation += 1
        goal = self._radio("goal") or "erase"
        method = self._radio("method") or "full"
        request = MitigationRequest(self.suspect, self.base, Path("unused"), goal=goal,
                                    method="full" if method == "revert" else method, revert=method == "revert",
                                    layers=self._text("layers") or "auto",
                                    modules=str(self.query_one("#modules", Select).value))
        self.query_one("#plan-box", Static).update(Text("working out the plan…", style="dim"))
        self._plan_worker(Job(self.app), request, self._generation)

    @work(thread=True, group="plan")
    def _plan_worker(self, job: Job, request: MitigationRequest, generation: int) -> None:
        def plan():
            from editaudit.mitigation.service import MitigationOptions, prepare

            opts = MitigationOptions(base=request.base, method=request.method, layers=request.layers,
                                     modules=request.modules, revert=request.revert)
            _, _, evidence, plan = prepare(request.suspect, request.goal, opts, self.app.new_store())  # type: ignore[attr-defined]
            return (plan.to_dict() if plan else None, evidence.to_dict() if evidence else None, request.revert)

        outcome = job.run(plan)
        job.ui(self._show_plan, outcome, generation)

    def _show_plan(self, outcome: Outcome, generation: int) -> None:
        if generation != self._generation:
            return  # a newer preview is on its way
        box = self.query_one("#plan-box", Static)
        if outcome.error is not None:
            box.update(Text(f"✗ {describe_error(outcome.error)}", style=ERROR))
            return
        if outcome.result is None:
            return
        plan, evidence, revert = outcome.result
        self.plan = plan
        box.update(plan_text(plan, evidence, revert))

    # -- actions -----------------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        elif event.button.id == "back":
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_run(self) -> None:
        request, problems = self.request()
        if request is None:
            self.notify("\n".join(problems), title="cannot run yet", severity="error", markup=False)
            return
        self.dismiss(request)


def plan_text(plan: dict | None, evidence: dict | None, revert: bool) -> Group:
    lines: list[Text] = []
    if revert and evidence:
        lines.append(plain(f"surgical revert of {len(evidence['tensors'])} edited tensors ({evidence['source']}):"))
        for name, k in evidence["components"].items():
            lines.append(plain(f"  • {name}: remove the top {k} component(s) of its change from the base"))
        lines.append(Text("every other change in the checkpoint stays as it is", style="dim"))
    elif plan:
        lines += [plain(x) for x in plan["explanation"]]
        lines += [plain(f"warning: {w}", WARNING) for w in plan["warnings"]]
        names = plan["params"]
        shown = ", ".join(names[:4]) + (f" … (+{len(names) - 4})" if len(names) > 4 else "")
        lines.append(plain(f"tensors: {shown}", "dim"))
    elif evidence and evidence.get("readings"):  # a base-free erase: the subjects the scan read
        lines.append(plain(f"base-free erase of the edits the scan read ({evidence['source']}):"))
        for r in evidence["readings"][:12]:
            lines.append(plain(f"  • layer(s) {r.get('finding_layers') or r.get('layer')}: {r['subject']} · "
                               f"{r.get('prompt', '')} · {r.get('after', '')}"))
        lines.append(Text("no base and no training data needed", style="dim"))
    else:
        lines.append(Text("nothing to do", style="dim"))
    return Group(*lines)
