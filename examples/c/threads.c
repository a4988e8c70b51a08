/* mcir C example: running a model on several cores with a pthreads parallel-for hook.
 *
 *   python examples/c/make_models.py build/c-example
 *   cc -O2 -pthread -Ibuild/c-example examples/c/threads.c build/c-example/wide.so \
 *      -Wl,-rpath,build/c-example -o build/c-example/threads
 *   build/c-example/threads 3
 *
 * The library starts no threads: mcir_wide_set_parallel installs the host's parallel-for, which
 * must call body(body_ctx, t) once for every t in [0, n_tasks) and return when all are done.
 * This hook is the simplest correct one (a thread per task beyond the first, joined at the end);
 * a real program keeps a pool (mcir/threadpool.py has one in C). Outputs are bit-identical for
 * every thread count, which the program checks.
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
  int64_t task;
} job;

static void *run_job(void *arg) {
  job *j = (job *)arg;
  j->body(j->body_ctx, j->task);
  return NULL;
}

static int calls = 0; /* how many times the library used the hook (for the check below) */

static void parallel_for(void *ctx, void (*body)(void *, int64_t), void *body_ctx, int64_t n_tasks) {
  (void)ctx;
  calls++;
  pthread_t threads[64];
  job jobs[64];
  int64_t n = n_tasks < 64 ? n_tasks : 64;
  for (int64_t t = 1; t < n; t++) {
    jobs[t] = (job){body, body_ctx, t};
    if (pthread_create(&threads[t], NULL, run_job, &jobs[t]) != 0) { /* no thread: run it here */
      body(body_ctx, t);
      threads[t] = 0;
    }
  }
  body(body_ctx, 0);
  for (int64_t t = n; t < n_tasks; t++) body(body_ctx, t);
  for (int64_t t = 1; t < n; t++)
    if (threads[t]) pthread_join(threads[t], NULL);
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
  mcir_wide_set_parallel(parallel_for, NULL, n_threads);
  if (mcir_wide_run(in, outn, ws) != MCIR_OK) return 1;
  mcir_wide_set_parallel(NULL, NULL, 1); /* back to single-threaded */

  int same = memcmp(y1, yn, sizeof y1) == 0;
  printf("threads %d: hook called %d time(s), outputs %s\n", n_threads, calls, same ? "bit-identical" : "DIFFER");
  free(ws);
  return same && (n_threads <= 1 || calls > 0) ? 0 : 1;
}
