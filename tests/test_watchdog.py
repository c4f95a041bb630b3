"""No hang, ever: every exception a stage can raise crosses Parsl's process boundary intact, a stage
failure is one line naming the stage, the cycle and the file, and the watchdog turns a lost result
(here: a real executor whose result thread died on an exception that cannot be unpickled) into an
error within seconds."""

import importlib
import inspect
import os
import pkgutil
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import deserialize, serialize

import scoreda
from scoreda.io import CheckpointError
from scoreda.stages.common import StageFailed, call_stage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))


def scoreda_exceptions() -> list[type]:
    """Every exception class defined in the scoreda package (all modules imported)."""
    found = {}
    for mod in pkgutil.walk_packages(scoreda.__path__, "scoreda."):
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("scoreda"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _required_args(cls: type) -> int:
    """Positional arguments the constructor needs (1 for a plain exception, which takes its message)."""
    if (
        cls.__init__ is BaseException.__init__
        or "__init__" not in vars(cls)
        and cls.__mro__[1].__module__ == "builtins"
    ):
        return 1
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return max(1, len([p for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]))


def test_every_scoreda_exception_survives_parsl_serialisation():
    classes = scoreda_exceptions()
    names = {c.__name__ for c in classes}
    assert {"CheckpointError", "ConfigError", "Diverged", "WalltimeStop", "StageFailed"} <= names, names
    for cls in classes:
        e = cls(*[f"/run/cycles/000003/arg{i}.h5" for i in range(_required_args(cls))])
        try:
            raise e
        except BaseException:
            wrapped = RemoteExceptionWrapper(*sys.exc_info())  # what a Parsl worker sends back
        back = deserialize(serialize(wrapped)).get_exception()
        assert type(back) is cls and str(back) == str(e), cls


def test_checkpoint_error_keeps_its_parts_through_pickling():
    e = CheckpointError("/run/cycles/000003/analysis.h5", "truncated\nfile")
    back = deserialize(serialize(e))
    assert (back.path, back.problem, str(back)) == (e.path, "truncated file", str(e))


def _bad_stage(run_dir, cycle):
    raise CheckpointError(
        Path(run_dir) / "cycles" / f"{cycle - 1:06d}" / "analysis.h5", "file does not exist"
    )


def test_a_failing_stage_is_one_line_with_stage_cycle_and_file(tmp_path):
    with pytest.raises(StageFailed) as info:
        call_stage(_bad_stage, tmp_path, 4)
    line = str(info.value)
    assert line == f"_bad_stage of cycle 4 failed: {tmp_path}/cycles/000003/analysis.h5: file does not exist"
    assert "\n" not in line
    trace = (tmp_path / "logs" / "_bad_stage-000004.traceback").read_text()
    assert "CheckpointError" in trace  # the whole traceback is kept for whoever needs it


class Unpicklable(Exception):
    """Like CheckpointError before it was fixed: two arguments, so unpickling it fails."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")


def _raise_unpicklable():
    raise Unpicklable("/some/file.h5", "bad")


@pytest.mark.slow
def test_the_watchdog_turns_a_dead_result_thread_into_an_error(tmp_path, monkeypatch):
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
    from watchdog import Tasks, Watchdog, WorkflowError, wait

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # Parsl's scripts
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # workers import this module
    htex = HighThroughputExecutor(
        label="local",
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        max_workers_per_node=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    config = Config(executors=[htex], run_dir=str(tmp_path / "runinfo"), initialize_logging=False)
    app = python_app(_raise_unpicklable, executors=["local"])
    with parsl.load(config) as dfk:
        tasks = Tasks()
        fut = tasks.add("forecast", 7, app())
        t0 = time.perf_counter()
        with pytest.raises(WorkflowError, match="result thread died"):
            wait(fut, tasks, Watchdog(dfk, lost_after_s=60), print, poll=0.5)
        assert time.perf_counter() - t0 < 30
        assert not fut.done()  # without the watchdog this wait would never end
    parsl.clear()


class _FinishesWhileLookedAt(Future):
    """A future that completes (with a result) during the first look at it, as a Parsl task can."""

    def done(self):
        if not super().done():
            self.set_result({"result": 42})
            return False  # the look that started before it finished
        return True


def test_wait_does_not_mistake_a_task_finishing_mid_poll_for_a_failure():
    """Seen on a 300-cycle LETKF run: the future finished between two looks in one poll, and the run
    stopped with "error: NoneType: None". Now one look per poll decides."""
    from watchdog import Tasks, wait

    class Dog:
        def check(self):
            pass

    assert wait(_FinishesWhileLookedAt(), Tasks(), Dog(), print, poll=0.01) == {"result": 42}
