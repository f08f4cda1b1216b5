"""Tile-level process parallelism for encode and decode.

Why processes: constriction's range coder holds the GIL while it codes, and most of a tile's
numpy work is too small to keep a second core busy, so threads do not make a tile codec faster;
separate processes do.  Workers are *forked* after the model is loaded, so they start in
milliseconds and share its memory pages; each gets its per-process state (the model, and for
encoding its own handle on the input file) from a factory run once in the child.  Where fork is
not available (Windows, macOS's default) or one worker is asked for, jobs run in the calling
process -- same code, same results.

Results come back in submission order with at most ``2 * workers`` jobs in flight, so memory
stays bounded by the tile size whatever the image size.  Every job computes exactly what the
serial path computes, so outputs are identical for any number of workers.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # multiprocessing and concurrent.futures cost ~20 ms to import: only when workers run
    from concurrent.futures import Future, ProcessPoolExecutor

MAX_AUTO_WORKERS = 4


def fork_available() -> bool:
    """Whether worker processes can be forked (Linux); elsewhere everything runs in-process."""
    if not sys.platform.startswith("linux"):
        return False
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def auto_workers() -> int:
    """Default number of tile workers: the usable cores, at most MAX_AUTO_WORKERS."""
    return max(1, min(MAX_AUTO_WORKERS, usable_cores()))


# Per-process worker state, set once by _init in each forked worker (never in the parent).
_worker_state: Any = None


def _init(factory: Callable[[], Any]) -> None:
    global _worker_state
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _one_blas_thread()
    _worker_state = factory()


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Fork worker processes inside this block: SIGINT is blocked while it runs.

    A Ctrl-C that lands during a fork is raised inside Python's at-fork handlers (logging has
    one), which print and drop it: the run would carry on and finish as if never interrupted.
    Blocked, it stays pending and is raised right after the block as a KeyboardInterrupt.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, no signal masks
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_workers(ex: "ProcessPoolExecutor") -> None:
    """Start ``ex``'s worker processes now, with SIGINT blocked while they fork (``sigint_blocked``)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork pool to start early
        return
    with sigint_blocked():
        ex.submit(os.getpid)  # a fork pool starts all its workers at the first submit


def _one_blas_thread() -> object:
    """Limit BLAS to one thread in this process (several single-threaded processes share the cores;
    OpenBLAS's spinning threads on oversubscribed cores made 2 workers slower than 1)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _run(fn: Callable, args: tuple) -> Any:
    return fn(_worker_state, *args)


class TileMap:
    """``with TileMap(state, worker_state, n) as tm``: ``tm.imap(fn, jobs)`` yields ``fn(state, *job)`` in order.

    ``state`` serves jobs run in this process; ``worker_state()`` makes each worker's own (called
    once in the worker).  The workers live as long as the ``with`` block.
    """

    def __init__(self, state: Any, worker_state: Callable[[], Any], workers: int) -> None:
        self.workers = workers if workers > 1 and fork_available() else 1
        self._state = state
        self._factory = worker_state
        self._ex: ProcessPoolExecutor | None = None
        self._blas: Any = None

    def __enter__(self) -> "TileMap":
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._blas = _one_blas_thread()  # the parent's share of the work runs beside the workers
            ctx = multiprocessing.get_context("fork")
            self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init, initargs=(self._factory,))
            try:
                start_workers(self._ex)
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None
            self._blas.restore_original_limits()

    def imap(self, fn: Callable, jobs: Iterable[tuple]) -> Iterator[Any]:
        if self._ex is None:
            for args in jobs:
                yield fn(self._state, *args)
            return
        it = iter(jobs)
        pending: deque[Future] = deque()

        def submit() -> None:
            args = next(it, None)
            if args is not None:
                pending.append(self._ex.submit(_run, fn, args))

        for _ in range(2 * self.workers):
            submit()
        while pending:
            result = pending.popleft().result()
            submit()
            yield result

