"""The one stage contract every pipeline step follows, and how a stage runs on Ray Data.

A stage is a small object: a `name`, the `resources` one worker reserves,
`setup()` once per worker for anything heavy (a model, a tokenizer, a decode
child process), and `process(task) -> task`. A stage never raises for one bad
video: it calls `task.reject(...)` or raises `VideoError`, and `run_stage`
turns any exception into a reject row (stage, reason, detail). Rejected tasks
pass through later stages untouched, so every video reaches the writer exactly
once, either as a sample or as a reject.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
import threading
import time
import traceback
from typing import Any, ClassVar

from pipeline.core.config_run import StageResources
from pipeline.core.errors import Reason, Verdict, VideoError
from pipeline.core.meta import check_names, check_written, strict
from pipeline.core.task import VideoTask

log = logging.getLogger(__name__)
_setup_lock = threading.Lock()


class Stage(ABC):
    """Base class of every pipeline step. Subclasses set `name` and implement `process`."""

    name: ClassVar[str] = "stage"
    # Task data, as `frames` or `meta.<section>` (pipeline/core/meta.py): what must be there, what is used when there,
    # what the stage writes. The graph checks at build time that every read is written earlier.
    reads: ClassVar[tuple[str, ...]] = ()
    may_read: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    thread_safe: ClassVar[bool] = False  # may `process` run on several threads of one worker at once?
    config_field: str = ""  # the config path that put the stage in the graph (named when its reads are missing)
    score_only: bool = False  # a filter that scores and drops nothing: its `Verdict`s go to `would_reject`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_names(cls.__name__, (*cls.reads, *cls.may_read, *cls.writes))

    def __init__(self, resources: StageResources | None = None):
        self.resources = resources or StageResources()
        self._ready = False

    def setup(self) -> None:
        """Load heavy state once per worker process (called before the first task)."""

    def release(self, task: VideoTask) -> None:
        """Give back what `process` held for this task until its pool was done with it (a fetched copy): called
        once the task leaves the chain, rejected or not. Must not raise."""

    def teardown(self) -> None:
        """Release what setup took."""

    @abstractmethod
    def process(self, task: VideoTask) -> VideoTask:
        """Return the task with this stage's fields written, or raise VideoError / call task.reject."""

    def ensure_setup(self) -> bool:
        """Set up once per process; True for the call that did it."""
        if self._ready:
            return False
        with _setup_lock:
            if self._ready:
                return False
            self.setup()
            self._ready = True
            return True

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the stage's config, never another process's loaded state.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        state["_ready"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def run_stage(stage: Stage, task: VideoTask) -> VideoTask:
    """Run one stage on one task: time it, and turn every failure into a reject on the task."""
    if task.rejected:
        return task
    start = time.perf_counter()
    metrics = task.metrics  # measured beside the data, never in `meta`
    metrics.started_at = metrics.started_at or time.time()  # the run's processing window starts with its first video
    before = copy.deepcopy(task.meta) if strict(stage) else None
    try:
        if not stage._ready:  # a worker's one-off cost: kept apart from the per-video seconds `plan` scales
            did_setup = stage.ensure_setup()
            ready = time.perf_counter()
            if did_setup:
                metrics.add_setup_time(stage.name, ready - start)
            start = ready
        task = stage.process(task)
        problem = check_written(stage, before, task.meta) if before is not None else None
        if problem:
            raise RuntimeError(problem)
    except Verdict as e:
        if stage.score_only:  # the filter scores, drops nothing: note what it would have done
            task.meta.setdefault("would_reject", []).append(f"{e.reason.value}: {e.detail}")
        else:
            task.reject(stage.name, e.reason.value, e.detail)
    except VideoError as e:
        task.reject(stage.name, e.reason.value, e.detail)
    except Exception as e:  # a bug must not stop the run: record it where the user will see it
        log.exception("stage %s failed on %s", stage.name, task.source)
        tail = "".join(traceback.format_exception_only(type(e), e)).strip()
        task.reject(stage.name, Reason.INTERNAL_ERROR.value, tail)
    task.metrics = metrics  # the stage may have handed back another task object
    metrics.add_time(stage.name, time.perf_counter() - start)
    return task


def run_chain(stages: list[Stage], row: dict[str, Any], set_names: list[str], locks: dict[int, Any] | None = None) -> dict[str, Any]:
    """Row in, row out: the stages of one fused Ray task applied in order.

    `locks` (stage index -> lock) serialises stages that are not thread-safe when a worker runs several rows at once.
    """
    task = VideoTask.from_row(row)
    try:
        for n, stage in enumerate(stages):
            lock = (locks or {}).get(n)
            if lock is None:
                task = run_stage(stage, task)
            else:
                with lock:
                    task = run_stage(stage, task)
    finally:
        for stage in stages:
            try:
                stage.release(task)
            except Exception:  # a cleanup that failed must not turn a kept video into a lost one
                log.exception("release of %s failed on %s", stage.name, task.source)
    return task.to_row(set_names)


class ChainWorker:
    """A Ray Data actor callable that sets its stages up once per worker process."""

    def __init__(self, stages: list[Stage], set_names: list[str]):
        self.stages = stages
        self.set_names = set_names
        self.locks = {n: threading.Lock() for n, s in enumerate(stages) if not s.thread_safe}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return run_chain(self.stages, row, self.set_names, self.locks)

    def __del__(self) -> None:  # Ray Data drops the callable when the pool shuts down gracefully
        for stage in getattr(self, "stages", []):
            if stage._ready:
                try:
                    stage.teardown()
                except Exception:
                    log.exception("teardown of %s failed", stage.name)


def ray_args(resources: StageResources) -> dict[str, Any]:
    """What one worker reserves, as Ray's resource arguments (a zero GPU or memory: not asked for)."""
    args: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        args["num_gpus"] = resources.num_gpus
    if resources.memory_mb:
        args["memory"] = resources.memory_mb * 1024 * 1024
    return args


def apply_stages(
    ds: Any, stages: list[Stage], resources: StageResources, set_names: list[str], pool_size: int,
    rows_per_actor: int = 1, label_selector: dict[str, str] | None = None,
) -> Any:
    """Add `stages` to a Ray Dataset as one map over `pool_size` actors (each sets up once, then streams rows).

    `rows_per_actor` > 1 runs that many rows at once on each actor's threads (for stages that wait on a server);
    `label_selector` limits the nodes the actors may run on (e.g. pins them to the driver's node).
    """
    if not stages:
        return ds
    import ray.data

    if rows_per_actor > 1:
        compute = ray.data.ActorPoolStrategy(
            size=pool_size,
            max_tasks_in_flight_per_actor=rows_per_actor,
            max_concurrent_calls_per_actor=rows_per_actor,
            enable_true_multi_threading=True,
        )
    else:
        # at most 2 videos queued per actor, so one slow video never holds several others behind it
        compute = ray.data.ActorPoolStrategy(size=pool_size, max_tasks_in_flight_per_actor=2)
    return ds.map(ChainWorker, fn_constructor_args=(stages, set_names), compute=compute, label_selector=label_selector,
                  **ray_args(resources))
