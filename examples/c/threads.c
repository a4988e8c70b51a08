/* mcir C example: running a model on several cores with a pthreads parallel-for hook.
 *
 *   python examples/c/make_models.py build/c-example
 *   cc -O2 -pthread -Ibuild/c-example examples/c/threads.c build/c-example/wide.so \
 *      -Wl,-rpath,build/c-example -o build/c-example/threads
 *   build/c-example/threads 3
 *
 * The library starts no threads: mcir_wide_set_parallel installs the host's parallel-for, which
 * must call body(body_ctx, t) once for every t in [0, n_tasks) and return when all are done.
 * The library hands out up to 4 tasks per thread; this hook, the simplest correct one, starts
 * n_threads - 1 threads per call that claim tasks from a shared counter with the calling thread
 * and joins them at the end. A real program keeps a pool (mcir/threadpool.py has one in C).
 * Outputs are bit-identical for every thread count, which the program checks.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wide.h"

typedef struct {
  void (*body)(void *, int64_t);
  void *body_ctx;
  int64_t n_tasks;
  int64_t next; /* the next task to claim (atomic) */
} job;

static void *claim_tasks(void *arg) {
  job *j = (job *)arg;
  for (int64_t t; (t = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->n_tasks;) j->body(j->body_ctx, t);
  return NULL;
}

static int calls = 0; /* how many times the library used the hook (for the check below) */

static void parallel_for(void *ctx, void (*body)(void *, int64_t), void *body_ctx, int64_t n_tasks) {
  int n_threads = *(int *)ctx;
  if (n_tasks == 0) return; /* the library's end-of-run notice (docs/abi.md): a pool could let its workers sleep */
  calls++;
  job j = {body, body_ctx, n_tasks, 0};
  pthread_t threads[64];
  int started = 0;
  for (int i = 1; i < n_threads && i < 64 && i < n_tasks; i++)
    if (pthread_create(&threads[started], NULL, claim_tasks, &j) == 0) started++; /* else: fewer helpers */
  claim_tasks(&j);
  for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
}

int main(int argc, char **argv) {
  int n_threads = argc > 1 ? atoi(argv[1]) : 2;
  static float x[32 * 256], y1[32 * 700], yn[32 * 700];
  for (int i = 0; i < 32 * 256; i++) x[i] = (float)((i * 7919) % 201 - 100) / 100.0f;
  void *ws = mcir_wide_workspace_size() ? aligned_alloc(64, (mcir_wide_workspace_size() + 63) / 64 * 64) : NULL;
  const void *in[] = {x};
  void *out1[] = {y1};
  void *outn[] = {yn};

  if (mcir_wide_run(in, out1, ws) != MCIR_OK) return 1; /* no hook: single-threaded */
  mcir_wide_set_parallel(parallel_for, &n_threads, n_threads);
  if (mcir_wide_run(in, outn, ws) != MCIR_OK) return 1;
  mcir_wide_set_parallel(NULL, NULL, 1); /* back to single-threaded */

  int same = memcmp(y1, yn, sizeof y1) == 0;
  printf("threads %d: hook called %d time(s), outputs %s\n", n_threads, calls, same ? "bit-identical" : "DIFFER");
  free(ws);
  return same && (n_threads <= 1 || calls > 0) ? 0 : 1;
}
