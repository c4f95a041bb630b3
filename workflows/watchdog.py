"""Waiting on a Parsl DAG without ever hanging: every task is registered with its stage and cycle,
the first real failure ends the wait with one line naming them, and a watchdog turns a lost task
(a dead executor thread, interchange or worker pool) into an error within a bounded time.
"""

from __future__ import annotations

import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from parsl.app.errors import BashExitFailure
from parsl.dataflow.errors import DependencyError
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.errors import CommandClientTimeoutError
from parsl.providers import LocalProvider

from scoreda.stages.common import Diverged, StageFailed, WalltimeStop

STOPS = (Diverged, WalltimeStop)  # deliberate ends of a run, reported by the workflow itself
ANSWER_WITHIN_S = 30.0  # the interchange's answer to a status question


class WorkflowError(RuntimeError):
    """The run cannot go on; ``str(err)`` is the one line to show."""


@dataclass
class Task:
    stage: str
    cycle: int
    future: Future
    log: Path | None = None  # stderr of a job (MPI analysis, training)
    replaces: list = field(default_factory=list)  # the bad files (verify.BadFile) this task remakes
    reported: bool = False


class Tasks:
    """Every future the workflow submitted, in submission order (cycle order)."""

    def __init__(self) -> None:
        self.items: list[Task] = []

    def add(self, stage: str, cycle: int, future: Future, log: Path | None = None, replaces=()) -> Future:
        self.items.append(Task(stage, cycle, future, log, list(replaces)))
        return future

    def failure(self) -> Task | None:
        """The first task that failed on its own (not for a failed input, not by a deliberate stop)."""
        for t in self.items:
            f = t.future
            if f.done() and f.exception() is not None:
                e = f.exception()
                if not isinstance(e, (DependencyError, *STOPS)):
                    return t
        return None

    def stop(self) -> BaseException | None:
        """The first deliberate stop (``Diverged``, ``WalltimeStop``) a task raised, if any."""
        for t in self.items:
            if t.future.done() and isinstance(t.future.exception(), STOPS):
                return t.future.exception()
        return None

    def messages(self) -> list[str]:
        """Lines not yet shown: the notes of finished stages and the files their tasks replaced."""
        out = []
        for t in self.items:
            if t.reported or not t.future.done() or t.future.exception() is not None:
                continue
            t.reported = True
            result = t.future.result()
            if isinstance(result, dict):
                out += result.get("notes", [])
            out += [f"replaced {b.path} ({b.problem}): remade by {t.stage}({t.cycle})" for b in t.replaces]
        return out


def describe_failure(t: Task) -> str:
    """One line for a failed task: the stage, the cycle, and the file or log that says why."""
    e = t.future.exception()
    if isinstance(e, StageFailed):
        return str(e)
    head = f"{t.stage} of cycle {t.cycle} failed"
    if isinstance(e, BashExitFailure):
        last = _last_line(t.log) if t.log else None
        detail = last.removeprefix("error: ") if last else f"exit code {e.exitcode}"
        return f"{head}: {detail} (log: {t.log})"
    text = " ".join(str(e).split())
    if "loss of worker" in text or "loss of manager" in text:  # WorkerLost, ManagerLost
        return f"{head}: the Parsl worker running it was lost ({text[:200]})"
    return f"{head}: {type(e).__name__}: {text[:300]}"


def _last_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [None])[-1]


class Watchdog:
    """Checks that the executors can still deliver results. ``lost_after_s``: how long tasks may wait
    with no worker pool connected before that counts as lost (only where the workflow starts the pool
    itself, ``LocalProvider``: a pool submitted to a batch queue may rightly wait longer)."""

    def __init__(self, dfk, lost_after_s: float):
        self.dfk = dfk
        self.lost_after_s = lost_after_s
        self.alone_since: float | None = None

    def check(self) -> None:
        for ex in self.dfk.executors.values():
            if not isinstance(ex, HighThroughputExecutor):
                continue
            if ex.bad_state_is_set:
                raise WorkflowError(f"the Parsl executor {ex.label!r} failed: {ex.executor_exception}")
            thread = getattr(ex, "_result_queue_thread", None)
            if thread is not None and not thread.is_alive():
                _release(ex)
                raise WorkflowError(
                    f"the Parsl executor {ex.label!r} stopped receiving results (its result thread died;"
                    f" see {self.dfk.run_dir}/*/{ex.label}/)"
                )
            proc = getattr(ex, "interchange_proc", None)
            if proc is not None and proc.poll() is not None:
                raise WorkflowError(f"the Parsl interchange of {ex.label!r} exited (code {proc.returncode})")
            if isinstance(ex.provider, LocalProvider) and ex.outstanding() > 0:
                self._check_pool(ex)

    def _check_pool(self, ex) -> None:
        try:  # the interchange answers at once; a silent one would make connected_managers() wait forever
            managers = ex.command_client.run("MANAGERS", timeout_s=ANSWER_WITHIN_S)
        except CommandClientTimeoutError:
            raise WorkflowError(
                f"the Parsl interchange of {ex.label!r} did not answer in {ANSWER_WITHIN_S:g} s"
            ) from None
        except Exception:  # the command channel is closing or gone: the checks above decide
            return
        now = time.monotonic()
        if managers:
            self.alone_since = None
        elif self.alone_since is None:
            self.alone_since = now
        elif now - self.alone_since > self.lost_after_s:
            raise WorkflowError(
                f"{ex.outstanding()} task(s) waited {now - self.alone_since:.0f} s with no Parsl worker pool"
                f" connected (platform.lost_after_s={self.lost_after_s:g}); the pool was lost"
            )


def _release(ex) -> None:
    """Close the result socket a dead result thread left open: a zmq context with an open socket blocks
    its termination, and with it the exit of the process, forever."""
    q = getattr(ex, "incoming_q", None)
    try:
        q.results_receiver.close(linger=0)
        q.zmq_context.term()
    except Exception:  # already closed, or a Parsl without these attributes: nothing is left open
        pass


def wait(future: Future, tasks: Tasks, dog: Watchdog, say, poll: float = 1.0):
    """``future.result()``, polling: shows the tasks' messages (``say``) as they finish, and raises
    ``WorkflowError`` on the first failed task or a lost executor instead of waiting forever.
    A deliberate stop (``Diverged``, ``WalltimeStop``) upstream is raised as it is."""
    while True:
        futures.wait([future], timeout=poll)
        for line in tasks.messages():
            say(line)
        done = future.done()  # once: a future finishing between two looks is not a failure
        if done and future.exception() is None:
            return future.result()
        if (t := tasks.failure()) is not None:
            raise WorkflowError(describe_failure(t))
        if done:
            e = future.exception()
            raise e if isinstance(e, STOPS) else tasks.stop() or WorkflowError(f"{type(e).__name__}: {e}")
        dog.check()
