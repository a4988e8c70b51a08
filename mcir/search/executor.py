"""Where trials run: local worker processes (default) or Ray tasks.

Both give the driver the same two calls, ``submit(*args) -> handle`` and ``wait(handles) ->
[(handle, result)]`` for those finished, so the driver (the only writer of the study) does not
care where a trial ran. Workers never touch the study's storage: results come back to the
driver, which records them, so the SQLite file stays the single source of truth.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any

from mcir.errors import McirError
from mcir.search.trial import run_trial


class LocalExecutor:
    """``workers`` processes on this machine (spawned: each imports torch once, then runs many trials).

    Trials run outside the driver so that a crash inside a candidate's native code (a segfault
    in a kernel) costs one trial, not the search.
    """

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, *args: Any) -> Any:
        return self.pool.submit(run_trial, *args)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out = []
        for h in done:
            try:
                out.append((h, h.result()))
            except cf.process.BrokenProcessPool as e:
                # the worker died (signal, out of memory): the trial failed, the pool must be rebuilt
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                out.append((h, {"status": "fail", "error": f"worker process died: {e}"}))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Trials as Ray tasks: on a local Ray started for the run (``address=None``, ``workers`` CPUs)
    or on the cluster at ``address`` that the user runs (``"auto"`` or ``ray://host:10001``)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise McirError(
                "--executor ray needs Ray: pip install 'mcir[search]' (or pip install ray), or use --executor local"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            # workers import this mcir: pass the driver's import path on (a cluster must have mcir installed)
            env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
            kwargs: dict[str, Any] = {"address": address, "runtime_env": {"env_vars": env}, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = workers
                kwargs["include_dashboard"] = False
            ray.init(**kwargs)
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_trial)

    def submit(self, *args: Any) -> Any:
        return self.task.remote(*args)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for h in done:
            try:
                out.append((h, self.ray.get(h)))
            except Exception as e:  # a lost task or dead worker is a failed trial
                out.append((h, {"status": "fail", "error": f"ray task failed: {type(e).__name__}: {e}"}))
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(kind: str, workers: int, address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor named ``kind`` (``local`` or ``ray``)."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address)
    raise McirError(f"executor {kind!r}: expected 'local' or 'ray'")
