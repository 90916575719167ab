"""Discovery as one job: which facts did the suspect change? Both the CLI and the app call this; they only render.

The facts run on the base, then on the suspect (one model in memory at a time); each fact is ranked by
how far its answer and probabilities moved, sharpened by the latest stored scan of the pair (its promoted
tokens and candidate subjects). With a store, both runs are recorded together once both have finished,
so a cancelled discovery records nothing; in ``session_id`` when given, else in a session of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BadInput
from ..progress import Note, Progress, ignore
from .format import Probe
from .jobs import run_labelled
from .service import Hints, Movement, discover, record_run, scan_hints, summarize


@dataclass
class Discovery:
    """What a discovery found, and where it was recorded."""

    base: Path
    suspect: Path
    sets: list[str]
    probes: int
    hints: Hints | None
    moves: list[Movement]
    summaries: dict[str, dict]
    session_id: str | None = None
    run_ids: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(m.changed for m in self.moves)

    def ranked(self) -> list[dict]:
        return [m.to_dict() for m in self.moves]

    def to_dict(self) -> dict:
        return {"session": self.session_id, "base": str(self.base), "suspect": str(self.suspect), "sets": self.sets,
                "hints": self.hints.to_dict() if self.hints else None, "changed": self.changed,
                "ranked": self.ranked(), "summary": self.summaries}


def run_discovery(suspect: str | Path, base: str | Path, probes: Sequence[Probe], set_names: Sequence[str], *,
                  store=None, session_id: str | None = None, scan_id: int | None = None, batch_size: int = 32,
                  top_k: int = 5, device: str | None = None, dtype: str = "float32", progress: Progress = ignore,
                  cancelled: Callable[[], bool] = lambda: False) -> Discovery:
    """Run ``probes`` on base and suspect and rank the facts that moved. Raises BadInput on bad input.

    ``scan_id`` picks the stored scan whose findings sharpen the ranking (default: the latest of the pair).
    """
    from ..models.registry import resolve_model
    from ..store.sessions import now

    probes = list(probes)
    if not probes:
        raise BadInput("no probes to run")
    if batch_size < 1 or top_k < 1:
        raise BadInput("batch size and top-k must be at least 1")
    say = lambda text: progress(Note(text))  # noqa: E731
    base_path = resolve_model(str(base), say)
    suspect_path = resolve_model(str(suspect), say)
    hints = None
    if store is not None:
        hints = scan_hints(store, base_path, suspect_path, scan_id)
        if hints:
            say(f"using scan #{hints.scan_id}: {len(hints.tokens)} promoted tokens, "
                f"{len(hints.subjects)} candidate subjects")
    elif scan_id is not None:
        raise BadInput("a stored scan needs the session store")
    if scan_id is not None and hints is None:
        raise BadInput(f"no scan #{scan_id} in the session store")

    own = store is not None and session_id is None
    sid = store.new_session("probe", f"discover {Path(suspect).name}", str(base_path), str(suspect_path)) if own \
        else session_id
    try:
        started = now()
        say(f"running {len(probes)} facts on the base")
        base_results = run_labelled(base_path, "base", probes, batch_size, top_k, device, dtype, progress, cancelled)[0]
        say(f"running {len(probes)} facts on the suspect")
        suspect_results = run_labelled(suspect_path, "suspect", probes, batch_size, top_k, device, dtype, progress,
                                       cancelled)[0]
        moves = discover(base_results, suspect_results, hints)
        found = Discovery(base_path, suspect_path, list(set_names), len(probes), hints, moves,
                          {"base": summarize(base_results), "suspect": summarize(suspect_results)}, sid)
        if store is not None:
            extra = {m.probe.id: {"movement": {"score": m.score, "changed": m.changed, "shift": m.shift,
                                               "d_logp_true": m.d_logp_true, "hint": m.hint}, "rank": i + 1}
                     for i, m in enumerate(moves)}
            found.run_ids["base"] = record_run(store, sid, str(base_path), "base", set_names, base_results,
                                               found.summaries["base"], started=started)
            found.run_ids["suspect"] = record_run(store, sid, str(suspect_path), "suspect", set_names,
                                                  suspect_results, found.summaries["suspect"], extra, started=started)
            if own:
                store.finish_session(sid, summary={"discover": True, "probes": len(probes), "changed": found.changed,
                                                   "top": found.ranked()[:10],
                                                   "scan_id": hints.scan_id if hints else None})
    except BaseException as exc:
        if own:
            store.finish_session(sid, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    return found
