"""Probing one or more models as one job: the CLI's ``probe`` and the app's Probes screen both call this.

Each model is loaded in turn (one in memory at a time) and answers every probe; with a store, all runs are
recorded together once every model has finished, so a cancelled job records nothing; in ``session_id`` when
given, else in a session of its own that is marked done, failed or interrupted.
"""

from __future__ import annotations

import gc
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BadInput
from ..progress import Event, Note, Progress, Stage, Step, ignore
from .format import Probe
from .metrics import same_token
from .service import ProbeResult, record_run, run_probes, summarize


def run_labelled(spec: str | Path, label: str, probes: Sequence[Probe], batch_size: int, top_k: int,
                 device: str | None, dtype: str, progress: Progress,
                 cancelled: Callable[[], bool]) -> tuple[list[ProbeResult], Path]:
    """Load one model and run the probes on it; its label goes into every progress event's stage name, and a
    cancel stops the run at the next batch. Returns the results and the model's resolved folder."""
    from ..models.loading import load_model

    lm = load_model(spec, dtype=dtype, device=device, say=lambda text: progress(Note(f"{label}: {text}")))

    def relay(event: Event) -> None:
        if cancelled():
            raise KeyboardInterrupt
        if isinstance(event, Stage):
            event = Stage(f"{label} {event.name}", event.total)
        elif isinstance(event, Step):
            event = Step(f"{label} {event.stage}", event.done, event.total)
        progress(event)

    results = run_probes(lm.model, lm.tokenizer, probes, batch_size=batch_size, top_k=top_k, progress=relay)
    path = Path(lm.path)
    del lm
    gc.collect()
    return results, path


@dataclass
class ProbeJob:
    """What a probe job answered, per model, and where it was recorded."""

    sets: list[str]
    probes: int
    models: list[dict] = field(default_factory=list)  # {model, path, label, run_id, summary, results}
    session_id: str | None = None

    @property
    def agreement(self) -> float | None:
        """Share of probes on which every model gives the same answer (None with one model)."""
        if len(self.models) < 2:
            return None
        flags = []
        for row in zip(*[m["results"] for m in self.models]):
            first = row[0]["answer"]
            flags.append(all(same_token(r["answer"], first) or (not r["answer"] and not first) for r in row))
        return round(sum(flags) / len(flags), 6) if flags else None

    def to_dict(self) -> dict:
        return {"session": self.session_id, "sets": self.sets, "models": self.models, "agreement": self.agreement}


def run_probe_job(models: Sequence[tuple[str, str | Path]], probes: Sequence[Probe], set_names: Sequence[str], *,
                  store=None, session_id: str | None = None, batch_size: int = 32, top_k: int = 5,
                  device: str | None = None, dtype: str = "auto", progress: Progress = ignore,
                  cancelled: Callable[[], bool] = lambda: False) -> ProbeJob:
    """Run ``probes`` on every (label, model) in turn. Raises BadInput on bad input."""
    from ..store.sessions import now

    probes = list(probes)
    if not probes:
        raise BadInput("no probes to run")
    if not models:
        raise BadInput("no model to probe")
    if batch_size < 1 or top_k < 1:
        raise BadInput("batch size and top-k must be at least 1")
    job = ProbeJob(list(set_names), len(probes))
    own = store is not None and session_id is None
    first = Path(str(models[0][1])).name
    title = f"probe {first}" + (f" vs {len(models) - 1} more" if len(models) > 1 else "")
    job.session_id = store.new_session("probe", title, None, str(models[0][1])) if own else session_id
    with store.running(job.session_id) if own else nullcontext():
        started = now()
        runs = []
        for label, spec in models:
            if cancelled():
                raise KeyboardInterrupt
            progress(Note(f"probing {spec} with {len(probes)} probes"))
            results, path = run_labelled(spec, label, probes, batch_size, top_k, device, dtype, progress, cancelled)
            runs.append((label, spec, path, results, summarize(results)))
        for label, spec, path, results, summary in runs:
            run_id = record_run(store, job.session_id, str(path), label, list(set_names), results, summary,
                                started=started) if store is not None else None
            job.models.append({"model": str(spec), "path": str(path), "label": label, "run_id": run_id,
                               "summary": summary, "results": [r.to_dict() for r in results]})
        if own:
            store.finish_session(job.session_id, summary={
                "sets": list(set_names), "probes": len(probes),
                "models": {m["model"]: m["summary"] for m in job.models}, "agreement": job.agreement})
    return job
