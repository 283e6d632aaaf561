"""Who runs the units: this process, a local process pool (--workers N), or Ray tasks (--engine ray).
All run the same `run_unit`; a unit's output does not depend on where it ran."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from schemas.workunit import UnitMarker
from tokenizer_kit.errors import first_line

from ..base import Converter, SourceError
from ..inputs import ensure_local, fetched_inputs
from .unit import UnitJob, UnitSettings, run_unit

ENGINES = ("local", "ray")
RAY_RETRIES = 3  # a unit whose worker died (killed, node lost) runs again; its shards are simply replaced
RAY_POLL_SECONDS = 1.0  # how often the driver looks up from waiting (Ctrl-C, a cluster that lost its CPUs)
RAY_NO_CPU_SECONDS = 30.0  # a cluster with no CPU for this long cannot run the remaining units: stop
STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "FSSPEC_", "GATO_KIT_STORE_")  # what Ray tasks need to reach the store

OnDone = Callable[[UnitMarker], None]


def start_method() -> str:
    """How worker processes start. A forked worker is ready at once; a spawned one first spends
    ~0.6 s of CPU importing numpy and pyarrow. Fork on Linux, as HF datasets and PyTorch's
    DataLoader do with pyarrow in the parent, except once HDF5 is loaded (its library state must
    not be shared with a child: Minari and D4RL-style sources then spawn). Elsewhere, spawn (macOS
    system libraries are not fork-safe)."""
    return "fork" if sys.platform == "linux" and "h5py" not in sys.modules else "spawn"


_W: dict = {}


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when its driver dies, even by kill -9 (Linux
    PR_SET_PDEATHSIG; elsewhere the pool's own shutdown is all there is)."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before the line above: nobody would reap our units
        os._exit(1)


def _init_worker(converter: Converter, settings: UnitSettings, forked: bool, parent: int) -> None:
    die_with_parent(parent)
    if forked:  # as spawn would give them: own file handles, a fresh object-store session (no parent's threads)
        converter, settings = pickle.loads(pickle.dumps((converter, settings)))
    _W.update(converter=converter, settings=settings)


def _pool_unit(job: UnitJob) -> UnitMarker:
    return run_unit(_W["converter"], _W["settings"], job)


def run_local(converter: Converter, settings: UnitSettings, jobs: Sequence[UnitJob], workers: int,
              on_done: OnDone) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(run_unit(converter, settings, job))
        return
    ctx = mp.get_context(start_method())
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(converter, settings, ctx.get_start_method() == "fork", os.getpid())) as pool:
        pending = {pool.submit(_pool_unit, job) for job in jobs}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    on_done(f.result())  # re-raises a unit's error
        except BrokenProcessPool:
            raise SourceError("a worker process died (killed, or out of memory); run the same command again "
                              "to convert the units it did not finish") from None
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _ray_unit(shared: list, job: UnitJob) -> UnitMarker:
    """A Ray task: the converter is unpickled once per worker process (it may load a tokenizer),
    not once per unit. An input the driver fetched from a URL is fetched here too when this
    machine does not have it (a node that shares no disk with the driver)."""
    import ray  # noqa: PLC0415 - optional extra [ray]
    key = shared[0].hex()
    if key not in _W:
        _W.clear()
        _W[key] = ray.get(shared[0])
    converter, settings, fetched = _W[key]
    ensure_local(job.unit.path, fetched)
    return run_unit(converter, settings, job)


def run_ray(converter: Converter, settings: UnitSettings, jobs: Sequence[UnitJob], address: str | None,
            num_cpus: int | None, on_done: OnDone) -> None:
    try:
        import ray  # noqa: PLC0415 - optional extra [ray]
    except ImportError:
        raise SourceError("--engine ray needs Ray: pip install 'gato-kit[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False, runtime_env={"env_vars": store_env()})
        except Exception as e:  # noqa: BLE001 - Ray's start-up fails in many types (timeouts, OSError, its own)
            raise SourceError(f"--engine ray: cannot reach Ray at {address or 'a new local instance'}: "
                              f"{first_line(e)}") from None
    try:
        # the store's settings travel with the tasks too when Ray was started by the caller
        task = ray.remote(max_retries=RAY_RETRIES, num_cpus=1)(_ray_unit).options(
            runtime_env={"env_vars": store_env()})
        shared = [ray.put((converter, settings, fetched_inputs()))]  # in a list: the task gets the reference
        pending = [task.remote(shared, job) for job in jobs]
        try:
            no_cpu_since = None
            while pending:
                # a bounded wait: Ctrl-C is seen at once, and a cluster that lost its CPUs is noticed
                finished, pending = ray.wait(pending, num_returns=1, timeout=RAY_POLL_SECONDS)
                if not finished:
                    no_cpu_since = _check_cpus(ray, no_cpu_since, len(pending))
                    continue
                no_cpu_since = None
                for ref in finished:
                    try:
                        marker = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the unit's own error, else one line
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, Exception):
                            raise cause from None
                        raise SourceError(f"--engine ray: a unit failed: {first_line(e)}") from None
                    on_done(marker)
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a lost node's task cannot be cancelled; we leave anyway
                    pass
            raise
    finally:
        if started:
            ray.shutdown()


def store_env() -> dict[str, str]:
    """The driver's object-store settings (credentials, endpoint, patience) for Ray's runtime
    environment, so a task on another machine reaches the same store the same way. They travel
    through the cluster's control plane: use Ray's token authentication on a shared cluster."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}


def _check_cpus(ray, since: float | None, remaining: int) -> float | None:
    """None while the cluster has a CPU; else since when it has had none, and past
    RAY_NO_CPU_SECONDS a SourceError saying so (a re-run converts only the units left)."""
    if ray.cluster_resources().get("CPU", 0) >= 1:
        return None
    now = time.monotonic()
    if since is None:
        return now
    if now - since >= RAY_NO_CPU_SECONDS:
        raise SourceError(f"--engine ray: the cluster has had no CPU for {RAY_NO_CPU_SECONDS:g} s, so the "
                          f"{remaining} remaining units cannot run (nodes lost?); run the same command again "
                          "once it has nodes: finished units are kept")
    return since
