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
from pathlib import Path

from mcir.errors import RuntimeCallError

SOURCE = r"""
/* mcir thread pool: the parallel-for of docs/abi.md (mcir_parallel_fn) on pthreads.
   Workers spin briefly after each parallel-for before sleeping: a model's GEMMs follow each
   other within microseconds, and waking a thread blocked on a condition variable costs tens of
   microseconds under a hypervisor (measured: a 3-layer int8 MLP at batch 32 was slower on two
   threads than on one). The caller waits for the last tasks by spinning too (they are running). */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

typedef void (*mcir_task_fn)(void *body_ctx, int64_t task);

typedef struct mcir_pool {
  pthread_mutex_t lock;      /* guards sleepers and the condition wait */
  pthread_cond_t wake;       /* a new generation of tasks, or stop */
  pthread_mutex_t dispatch;  /* one parallel_for at a time */
  int n_workers;
  int sleepers;              /* workers blocked on wake (under lock) */
  pthread_t *threads;
  uint64_t generation;       /* atomic: bumped once per parallel_for */
  int stop;                  /* atomic */
  mcir_task_fn body;
  void *body_ctx;
  int64_t n_tasks;           /* atomic */
  int64_t finished;          /* atomic: tasks completed in this generation */
  uint64_t next;             /* atomic: (generation << 32) | next task to claim */
} mcir_pool;

/* a task index no task count reaches: nothing can be claimed while a generation is set up */
#define CLOSED 0xffffffffu
/* iterations of `pause` a worker spins before it sleeps (about 40-60 us on current x86: longer than
   the serial stretch between two split kernels, short enough not to steal a shared core for long) */
#define SPIN 1000

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

/* A claim is a compare-and-swap on `next`, whose high half names the generation: a worker that
   read `next` of an earlier generation (it arrived late) cannot claim an index of the current one
   with the previous task count or body; it fails the swap, re-reads, and finds the current state. */
static void run_tasks(mcir_pool *p) {
  for (;;) {
    uint64_t v = __atomic_load_n(&p->next, __ATOMIC_ACQUIRE);
    int64_t n = __atomic_load_n(&p->n_tasks, __ATOMIC_ACQUIRE);
    mcir_task_fn body = __atomic_load_n(&p->body, __ATOMIC_ACQUIRE);
    void *body_ctx = __atomic_load_n(&p->body_ctx, __ATOMIC_ACQUIRE);
    int64_t t = (int64_t)(v & 0xffffffffu);
    if (t >= n) return;
    if (!__atomic_compare_exchange_n(&p->next, &v, v + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    in_task = 1;
    body(body_ctx, t);
    in_task = 0;
    __atomic_fetch_add(&p->finished, 1, __ATOMIC_RELEASE);
  }
}

static void *worker(void *arg) {
  mcir_pool *p = (mcir_pool *)arg;
  uint64_t seen = 0;
  for (;;) {
    /* spinning, but yielding every 128 turns: on a machine shared with other processes (more runnable
       threads than cores) a spinning worker must not hold a core someone else could use */
    for (int i = 0; i < SPIN && __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen
                    && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE); i++) {
      if ((i & 127) == 127) sched_yield(); else relax();
    }
    if (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen) {
      /* the generation is checked again under the lock: the dispatcher bumps it before it takes
         the lock to look for sleepers, so a wake-up cannot be lost */
      pthread_mutex_lock(&p->lock);
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
  if (p == NULL || p->n_workers == 0 || n_tasks <= 1 || in_task) {
    for (int64_t t = 0; t < n_tasks; t++) body(body_ctx, t);
    return;
  }
  pthread_mutex_lock(&p->dispatch);
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
  if (p->threads == NULL) { free(p); return NULL; }
  for (int i = 0; i < n_workers; i++) {
    if (pthread_create(&p->threads[i], NULL, worker, p) != 0) break;
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
  free(p);
}
"""

_lock = threading.Lock()
_dll: ctypes.CDLL | None = None


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

    def close(self) -> None:
        """Stop and join the workers (no run may be using the pool)."""
        if self.handle:
            self._destroy(self.handle)
            self.handle = None

    def __del__(self) -> None:
        self.close()
