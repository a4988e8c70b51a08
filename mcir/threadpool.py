"""A native thread pool for mcir libraries' parallel hook (``mcir_NAME_set_parallel``, docs/abi.md).

The libraries start no threads of their own; the host supplies a parallel-for. This module is
the host side for Python: a small pthreads pool written in C, compiled once with the system
compiler (``$CC`` or ``cc``) into a cache directory (``$MCIR_CACHE``, else ``~/.cache/mcir``)
and loaded with ctypes. Tasks run entirely in native code: no Python per chunk, and the GIL is
released by ctypes for the whole model call.

    pool = ThreadPool(2)                 # the calling thread + 1 worker
    lib.set_threads(2)                   # what mcir.runtime.Library does with it

The caller of ``parallel_for`` runs tasks too, so ``ThreadPool(n)`` starts ``n - 1`` workers.
One ``parallel_for`` runs at a time per pool (a second caller waits): libraries called from
several Python threads at once stay correct, sharing the pool's workers.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mcir.errors import RuntimeCallError

SOURCE = r"""
/* mcir thread pool: the parallel-for of docs/abi.md (mcir_parallel_fn) on pthreads.
   Workers spin between parallel-fors instead of sleeping: waking a thread blocked on a condition
   variable costs tens of microseconds under a hypervisor (measured: a 3-layer int8 MLP at batch 32
   was slower on two threads than on one), and within one library run the next parallel-for comes
   microseconds later, or up to one task's length later when the caller is still finishing its last
   task (~0.3 ms in the int8 encoder). So a worker spins up to SPIN_IN_RUN_NS of wall time after
   its last task while a run is in progress, and only SPIN_AFTER_RUN_NS once the library signalled
   the end of its run (a parallel-for of 0 tasks, docs/abi.md): a core is burnt at most ~50 us
   after a call returns. The caller waits for the last tasks by spinning too (they are running). */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef void (*mcir_task_fn)(void *body_ctx, int64_t task);

/* Counters for measuring how work is shared (off unless mcir_pool_set_stats turned them on: two clock
   reads per task). Slot 0 is the calling thread, slot 1 + i worker i. One event per parallel-for. */
#define STAT_THREADS 8
#define STAT_EVENTS 8192
typedef struct mcir_pool_event {
  uint64_t body;           /* the task function: names the kernel */
  int64_t n_tasks;
  int64_t worker_tasks;    /* tasks run by workers (the rest ran on the caller) */
  uint64_t t_start, t_end; /* ns, CLOCK_MONOTONIC: entry and return of the parallel-for */
} mcir_pool_event;
typedef struct mcir_pool_stats {
  uint64_t tasks[STAT_THREADS];
  uint64_t task_ns[STAT_THREADS];
  uint64_t sleeps[STAT_THREADS];  /* times a worker blocked on the condition variable */
  uint64_t n_events;
  mcir_pool_event events[STAT_EVENTS];
} mcir_pool_stats;

typedef struct mcir_pool {
  pthread_mutex_t lock;      /* guards sleepers and the condition wait */
  pthread_cond_t wake;       /* a new generation of tasks, or stop */
  pthread_mutex_t dispatch;  /* one parallel_for at a time */
  int n_workers;
  int sleepers;              /* workers blocked on wake (under lock) */
  pthread_t *threads;
  struct worker_arg *args;   /* each worker's pool and stats slot */
  uint64_t generation;       /* atomic: bumped once per parallel_for */
  int stop;                  /* atomic */
  mcir_task_fn body;
  void *body_ctx;
  int64_t n_tasks;           /* atomic */
  int64_t finished;          /* atomic: tasks completed in this generation */
  uint64_t next;             /* atomic: (generation << 32) | next task to claim */
  int64_t worker_done;       /* atomic: tasks of this generation run by workers (with stats) */
  uint64_t runs_ended;       /* atomic: end-of-run notices (a parallel-for of 0 tasks) so far */
  mcir_pool_stats *stats;    /* NULL: no counting */
} mcir_pool;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* a task index no task count reaches: nothing can be claimed while a generation is set up */
#define CLOSED 0xffffffffu
/* how long a worker spins for the next parallel-for before it sleeps, in wall-clock ns (not `pause`
   counts: a `pause` takes ~140 cycles on recent Intel cores and a few on AMD ones) */
#define SPIN_IN_RUN_NS 1000000u
#define SPIN_AFTER_RUN_NS 50000u

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* set while this thread runs tasks: a parallel-for from inside a task runs inline (it would wait
   for the dispatch lock its own caller holds) */
static __thread int in_task;
/* this thread's stats slot: 0 the caller of a parallel-for, 1 + i worker i */
static __thread int stat_slot;

/* A claim is a compare-and-swap on `next`, whose high half names the generation: a worker that
   read `next` of an earlier generation (it arrived late) cannot claim an index of the current one
   with the previous task count or body; it fails the swap, re-reads, and finds the current state. */
static void run_tasks(mcir_pool *p) {
  mcir_pool_stats *st = p->stats;
  for (;;) {
    uint64_t v = __atomic_load_n(&p->next, __ATOMIC_ACQUIRE);
    int64_t n = __atomic_load_n(&p->n_tasks, __ATOMIC_ACQUIRE);
    mcir_task_fn body = __atomic_load_n(&p->body, __ATOMIC_ACQUIRE);
    void *body_ctx = __atomic_load_n(&p->body_ctx, __ATOMIC_ACQUIRE);
    int64_t t = (int64_t)(v & 0xffffffffu);
    if (t >= n) return;
    if (!__atomic_compare_exchange_n(&p->next, &v, v + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    in_task = 1;
    if (st) {
      uint64_t t0 = now_ns();
      body(body_ctx, t);
      int s = stat_slot < STAT_THREADS ? stat_slot : STAT_THREADS - 1;
      __atomic_fetch_add(&st->task_ns[s], now_ns() - t0, __ATOMIC_RELAXED);
      __atomic_fetch_add(&st->tasks[s], 1, __ATOMIC_RELAXED);
      if (stat_slot) __atomic_fetch_add(&p->worker_done, 1, __ATOMIC_RELAXED);
    } else {
      body(body_ctx, t);
    }
    in_task = 0;
    __atomic_fetch_add(&p->finished, 1, __ATOMIC_RELEASE);
  }
}

typedef struct worker_arg { mcir_pool *pool; int slot; } worker_arg;

static void *worker(void *arg) {
  mcir_pool *p = ((worker_arg *)arg)->pool;
  stat_slot = ((worker_arg *)arg)->slot;
  uint64_t seen = 0;
  for (;;) {
    /* spinning, but yielding every 128 turns: on a machine shared with other processes (more runnable
       threads than cores) a spinning worker must not hold a core someone else could use. The clock
       and the end-of-run count are read at the same points (every few microseconds). */
    uint64_t runs = __atomic_load_n(&p->runs_ended, __ATOMIC_ACQUIRE);
    uint64_t since = now_ns(), budget = SPIN_IN_RUN_NS;
    for (int i = 0; __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen
                    && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE); i++) {
      if ((i & 127) != 127) { relax(); continue; }
      sched_yield();
      uint64_t r = __atomic_load_n(&p->runs_ended, __ATOMIC_ACQUIRE);
      if (r != runs) { runs = r; since = now_ns(); budget = SPIN_AFTER_RUN_NS; }
      if (now_ns() - since > budget) break;
    }
    if (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen) {
      /* the generation is checked again under the lock: the dispatcher bumps it before it takes
         the lock to look for sleepers, so a wake-up cannot be lost */
      pthread_mutex_lock(&p->lock);
      if (p->stats) p->stats->sleeps[stat_slot < STAT_THREADS ? stat_slot : STAT_THREADS - 1]++;
      p->sleepers++;
      while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) && __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen)
        pthread_cond_wait(&p->wake, &p->lock);
      p->sleepers--;
      pthread_mutex_unlock(&p->lock);
    }
    if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) break;
    seen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE);
    run_tasks(p);
  }
  return NULL;
}

void mcir_pool_parallel_for(void *ctx, mcir_task_fn body, void *body_ctx, int64_t n_tasks) {
  mcir_pool *p = (mcir_pool *)ctx;
  if (p != NULL && n_tasks == 0 && !in_task) {
    /* a library's end-of-run notice: workers may sleep soon */
    __atomic_fetch_add(&p->runs_ended, 1, __ATOMIC_RELEASE);
    return;
  }
  if (p == NULL || p->n_workers == 0 || n_tasks <= 1 || in_task) {
    for (int64_t t = 0; t < n_tasks; t++) body(body_ctx, t);
    return;
  }
  pthread_mutex_lock(&p->dispatch);
  mcir_pool_stats *st = p->stats;
  uint64_t t_start = st ? now_ns() : 0;
  __atomic_store_n(&p->worker_done, 0, __ATOMIC_RELAXED);
  uint64_t gen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) + 1;
  __atomic_store_n(&p->next, ((gen & 0xffffffffu) << 32) | CLOSED, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->body, body, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->body_ctx, body_ctx, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->finished, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->n_tasks, n_tasks, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->next, (gen & 0xffffffffu) << 32, __ATOMIC_SEQ_CST);
  __atomic_store_n(&p->generation, gen, __ATOMIC_SEQ_CST);
  pthread_mutex_lock(&p->lock);
  if (p->sleepers) pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  run_tasks(p);
  /* the remaining tasks are running on workers: spin, yielding now and then in case one of them
     was preempted (an oversubscribed machine) */
  for (int i = 0; __atomic_load_n(&p->finished, __ATOMIC_ACQUIRE) < n_tasks; i++) {
    if ((i & 127) == 127) sched_yield(); else relax();
  }
  if (st && st->n_events < STAT_EVENTS) {
    mcir_pool_event *e = &st->events[st->n_events++];
    e->body = (uint64_t)(uintptr_t)body;
    e->n_tasks = n_tasks;
    e->worker_tasks = __atomic_load_n(&p->worker_done, __ATOMIC_RELAXED);
    e->t_start = t_start;
    e->t_end = now_ns();
  }
  pthread_mutex_unlock(&p->dispatch);
}

void *mcir_pool_create(int n_workers) {
  mcir_pool *p = (mcir_pool *)calloc(1, sizeof(mcir_pool));
  if (p == NULL) return NULL;
  pthread_mutex_init(&p->lock, NULL);
  pthread_mutex_init(&p->dispatch, NULL);
  pthread_cond_init(&p->wake, NULL);
  p->next = CLOSED;
  p->threads = (pthread_t *)calloc(n_workers > 0 ? n_workers : 1, sizeof(pthread_t));
  p->args = (worker_arg *)calloc(n_workers > 0 ? n_workers : 1, sizeof(worker_arg));
  if (p->threads == NULL || p->args == NULL) { free(p->threads); free(p->args); free(p); return NULL; }
  for (int i = 0; i < n_workers; i++) {
    p->args[i].pool = p;
    p->args[i].slot = i + 1;
    if (pthread_create(&p->threads[i], NULL, worker, &p->args[i]) != 0) break;
    p->n_workers++;
  }
  return p;
}

int mcir_pool_workers(void *ctx) { return ((mcir_pool *)ctx)->n_workers; }

void mcir_pool_destroy(void *ctx) {
  mcir_pool *p = (mcir_pool *)ctx;
  if (p == NULL) return;
  pthread_mutex_lock(&p->lock);
  __atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  for (int i = 0; i < p->n_workers; i++) pthread_join(p->threads[i], NULL);
  free(p->threads);
  free(p->args);
  free(p->stats);
  free(p);
}

/* Counting on (allocating zeroed counters) or off (freeing them); not while a parallel-for runs. */
int mcir_pool_set_stats(void *ctx, int on) {
  mcir_pool *p = (mcir_pool *)ctx;
  mcir_pool_stats *old = p->stats;
  p->stats = NULL;
  free(old);
  if (on) {
    p->stats = (mcir_pool_stats *)calloc(1, sizeof(mcir_pool_stats));
    if (p->stats == NULL) return -1;
  }
  return 0;
}

void *mcir_pool_get_stats(void *ctx) { return ((mcir_pool *)ctx)->stats; }
"""

_lock = threading.Lock()
_dll: ctypes.CDLL | None = None

# the sizes of the C side's counters (STAT_THREADS, STAT_EVENTS)
STAT_THREADS = 8
STAT_EVENTS = 8192


class _Event(ctypes.Structure):
    _fields_ = [
        ("body", ctypes.c_uint64),
        ("n_tasks", ctypes.c_int64),
        ("worker_tasks", ctypes.c_int64),
        ("t_start", ctypes.c_uint64),
        ("t_end", ctypes.c_uint64),
    ]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("tasks", ctypes.c_uint64 * STAT_THREADS),
        ("task_ns", ctypes.c_uint64 * STAT_THREADS),
        ("sleeps", ctypes.c_uint64 * STAT_THREADS),
        ("n_events", ctypes.c_uint64),
        ("events", _Event * STAT_EVENTS),
    ]


@dataclass(frozen=True)
class ParallelFor:
    """One parallel-for the pool ran: its task function's address, task count, how many tasks the workers
    ran (the rest ran on the calling thread), and its start and end (ns, CLOCK_MONOTONIC)."""

    body: int
    n_tasks: int
    worker_tasks: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class PoolStats:
    """What a pool counted since counting was turned on: per thread (0 = the calling thread, 1 + i = worker
    i) the tasks run, the ns spent in them and the times a worker went to sleep; and each parallel-for (the
    first ``STAT_EVENTS``)."""

    tasks: list[int]
    task_ns: list[int]
    sleeps: list[int]
    events: list[ParallelFor]


def cache_dir() -> Path:
    """Where the compiled pool lives: ``$MCIR_CACHE``, else ``~/.cache/mcir``."""
    return Path(os.environ.get("MCIR_CACHE") or Path.home() / ".cache" / "mcir")


def find_compiler() -> str | None:
    """The system C compiler mcir's small native helpers are built with (``$CC``, cc, gcc, clang), or None."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def build_helper(stem: str, source: str, flags: list[str], what: str, no_compiler: str) -> Path:
    """``source`` compiled once into ``cache_dir()/STEM-HASH.so`` (keyed by the source's hash; a cached
    build needs no compiler); the file appears by an atomic rename, so concurrent first uses leave one
    complete library. ``no_compiler`` is the error's text when there is no C compiler to build it."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    out = cache_dir() / f"{stem}-{digest}.so"
    if out.exists():
        return out
    cc = find_compiler()
    if cc is None:
        raise RuntimeCallError(no_compiler)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / f"{stem}.c"
        src.write_text(source)
        lib = Path(tmp) / f"{stem}.so"
        cmd = [cc, "-O2", "-shared", "-fPIC", *flags, str(src), "-o", str(lib)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeCallError(f"compiling mcir's {what} failed ({' '.join(cmd)}):\n{done.stderr}")
        os.replace(lib, out)
    return out


def build() -> Path:
    """The pool's shared library, compiled on first use (keyed by the source's hash)."""
    return build_helper(
        "threadpool",
        SOURCE,
        ["-pthread"],
        "thread pool",
        "threads need mcir's native pool, which is compiled once with a C compiler, and none was found "
        "($CC, cc, gcc, clang); install one, or run single-threaded (threads=1), or call "
        "mcir_NAME_set_parallel from your own program (docs/abi.md)",
    )


def _library() -> ctypes.CDLL:
    global _dll
    with _lock:
        if _dll is None:
            dll = ctypes.CDLL(str(build()))
            dll.mcir_pool_create.argtypes = [ctypes.c_int]
            dll.mcir_pool_create.restype = ctypes.c_void_p
            dll.mcir_pool_destroy.argtypes = [ctypes.c_void_p]
            dll.mcir_pool_destroy.restype = None
            dll.mcir_pool_workers.argtypes = [ctypes.c_void_p]
            dll.mcir_pool_workers.restype = ctypes.c_int
            dll.mcir_pool_set_stats.argtypes = [ctypes.c_void_p, ctypes.c_int]
            dll.mcir_pool_set_stats.restype = ctypes.c_int
            dll.mcir_pool_get_stats.argtypes = [ctypes.c_void_p]
            dll.mcir_pool_get_stats.restype = ctypes.POINTER(_Stats)
            _dll = dll
        return _dll


class ThreadPool:
    """``threads`` threads for mcir kernels: the caller of a run plus ``threads - 1`` native workers."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise RuntimeCallError(f"a thread pool needs at least 1 thread, got {threads}")
        dll = _library()
        self.threads = threads
        self._destroy = dll.mcir_pool_destroy
        self.handle = dll.mcir_pool_create(threads - 1)
        if not self.handle:
            raise RuntimeCallError("mcir's thread pool could not allocate its state")
        started = dll.mcir_pool_workers(self.handle)
        if started != threads - 1:
            self.close()
            raise RuntimeCallError(f"mcir's thread pool started {started} of {threads - 1} worker threads")
        # the address of the parallel-for, as mcir_NAME_set_parallel takes it
        self.parallel_for = ctypes.cast(dll.mcir_pool_parallel_for, ctypes.c_void_p).value

    def count(self, on: bool = True) -> None:
        """Start counting tasks and parallel-fors from zero (``on``), or stop and drop the counters.
        Counting reads the clock twice per task; not to be called while a run is in progress."""
        if _library().mcir_pool_set_stats(self.handle, int(on)) != 0:
            raise RuntimeCallError("mcir's thread pool could not allocate its counters")

    def stats(self) -> PoolStats:
        """The counters since ``count()`` (between runs: they are plain memory the threads write)."""
        ptr = _library().mcir_pool_get_stats(self.handle)
        if not ptr:
            raise RuntimeCallError("this thread pool is not counting: call count() before the runs to measure")
        st = ptr.contents
        n = self.threads
        events = [
            ParallelFor(e.body, e.n_tasks, e.worker_tasks, e.t_start, e.t_end)
            for e in st.events[: min(st.n_events, STAT_EVENTS)]
        ]
        return PoolStats(list(st.tasks[:n]), list(st.task_ns[:n]), list(st.sleeps[:n]), events)

    def close(self) -> None:
        """Stop and join the workers (no run may be using the pool)."""
        if self.handle:
            self._destroy(self.handle)
            self.handle = None

    def __del__(self) -> None:
        self.close()
