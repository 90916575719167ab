"""Run a study's grid as N independent worker processes through submitit, then merge their stores.

A grid that outgrows one process is cut into N shards (``grid.shard``); each shard runs as one task of a job
array, on this machine (``engine = "local"``: submitit's local executor starts one process per task) or on a
Slurm cluster (``engine = "slurm"``: one array task per shard, submitted with ``sbatch``). Each worker writes
**its own** SQLite store (``OUT/workers/wI.db``), because SQLite on a network file system is not safe for
several writers; when every task has ended the finished cells are merged into ``OUT/study.db`` (cell ids are
content hashes, so nothing clashes). Before the tasks start, the cells already finished in ``OUT/study.db`` are
copied into each worker's store, so a relaunch (or a different N) skips them.

submitit carries the task (this module's :func:`run_shard` and its arguments) to the worker as a pickle in
``OUT/submitit``, which it writes itself; nothing a user supplies is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInput

ENGINES = ("local", "slurm")


@dataclass
class LaunchOutcome:
    """What the workers did, and where their results went."""

    workers: int
    job_ids: list[str]
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)   # one line per failed cell or task
    merged: int = 0
    store: Path | None = None
    waited: bool = True


def worker_store(out: Path, index: int) -> Path:
    """The store of worker ``index``: one file per worker, never shared."""
    return out / "workers" / f"w{index}.db"


def run_shard(config: str, out: str, index: int, count: int) -> dict:
    """One worker's task: run shard ``index`` of ``count`` into its own store. Runs in the worker process."""
    from ..store.studies import StudyStore
    from .config import load_config
    from .runner import run_study

    cfg = load_config(Path(config))
    store = StudyStore(worker_store(Path(out), index))
    try:
        outcome = run_study(cfg, store, out, say=lambda s: print(s, flush=True), shard=(index, count))
    finally:
        store.close()
    return {"total": outcome.total, "skipped": outcome.skipped, "ran": outcome.ran, "failed": list(outcome.failed)}


def launch_study(config: str | Path, out: str | Path, workers: int, engine: str = "local", *,
                 timeout_min: int = 24 * 60, gpus_per_worker: int = 0, cpus_per_worker: int | None = None,
                 partition: str | None = None, wait: bool = True,
                 say: Callable[[str], None] = lambda s: None) -> LaunchOutcome:
    """Submit ``workers`` shard tasks with submitit and, with ``wait``, merge their stores into ``OUT/study.db``."""
    if engine not in ENGINES:
        raise BadInput(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if workers < 1:
        raise BadInput("workers must be at least 1")
    try:
        import submitit
    except ImportError:
        raise BadInput("launching workers needs submitit: pip install 'editaudit[cluster]'") from None
    from ..store.studies import StudyStore
    from .config import load_config

    config, out = Path(config).resolve(), Path(out).resolve()
    name = load_config(config).study.name  # a broken file fails here, not in N workers
    (out / "workers").mkdir(parents=True, exist_ok=True)
    main = out / "study.db"
    if main.is_file():
        for i in range(workers):
            st = StudyStore(worker_store(out, i))
            st.merge(main)
            st.close()

    executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=engine)
    params: dict = {"timeout_min": timeout_min, "name": f"editaudit-study-{config.stem}"}
    if gpus_per_worker:
        params["gpus_per_node"] = gpus_per_worker
    if cpus_per_worker:
        params["cpus_per_task"] = cpus_per_worker
    if partition and engine == "slurm":
        params["slurm_partition"] = partition
    if engine == "slurm":
        params["slurm_array_parallelism"] = workers
    executor.update_parameters(**params)
    jobs = executor.map_array(run_shard, [str(config)] * workers, [str(out)] * workers, list(range(workers)),
                              [workers] * workers)
    outcome = LaunchOutcome(workers=workers, job_ids=[j.job_id for j in jobs], store=main, waited=wait)
    say(f"{workers} worker task(s) submitted ({engine}): {', '.join(outcome.job_ids)}; logs in {out / 'submitit'}")
    if not wait:
        return outcome
    try:
        for i, job in enumerate(jobs):
            try:
                res = job.result()
            except Exception as exc:  # a task that died: its store keeps what it finished
                first = str(exc).strip().splitlines()
                outcome.failed.append(f"worker {i} (job {job.job_id}): {first[-1] if first else type(exc).__name__}")
                continue
            outcome.ran += res["ran"]
            outcome.skipped += res["skipped"]
            outcome.failed += [f"worker {i}: {f}" for f in res["failed"]]
            say(f"worker {i}: {res['ran']} ran, {res['skipped']} already done, {len(res['failed'])} failed")
    except KeyboardInterrupt:
        _interrupted(jobs, engine, out, workers, say)
        raise
    merge_workers(out, workers)
    st = StudyStore(main)
    outcome.merged = len(st.done_ids(name))
    st.close()
    return outcome


def _interrupted(jobs: list, engine: str, out: Path, workers: int, say: Callable[[str], None]) -> None:
    """An interrupt while waiting. Local tasks are this machine's processes: each is sent SIGINT (an interrupt
    that reached this process alone, ``kill -INT`` or the app's, would leave them running), which stops it as
    it stops a lone ``study run``: the cell in hand marked interrupted, finished cells kept. Cluster tasks are
    left to the scheduler. Either way every finished cell is merged now; a relaunch runs only what is missing."""
    if engine == "local":
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:  # a task that already ended has nothing to stop
                pass
        say(f"interrupted: {len(jobs)} local worker task(s) stopped")
    else:
        say(f"interrupted: the {engine} tasks keep running ({', '.join(j.job_id for j in jobs)}); "
            f"merge them when they end with: editaudit study merge {out / 'study.db'} {out / 'workers'}/w*.db")
    say(f"{merge_workers(out, workers)} finished cell(s) merged into {out / 'study.db'}; relaunch to run the rest")


def merge_workers(out: str | Path, workers: int) -> int:
    """Copy every worker store's finished cells into ``OUT/study.db``; returns how many were new."""
    from ..store.studies import StudyStore

    out = Path(out)
    st = StudyStore(out / "study.db")
    copied = 0
    for i in range(workers):
        path = worker_store(out, i)
        if path.is_file():
            copied += st.merge(path)
    st.close()
    return copied
