/* mcir C example: two compiled models in one program, with no mcir or Python at run time.
 *
 *   python examples/c/make_models.py build/c-example
 *   cc -O2 -Ibuild/c-example examples/c/main.c build/c-example/mlp.so build/c-example/classify.so \
 *      -Wl,-rpath,build/c-example -o build/c-example/app
 *   build/c-example/app build/c-example
 *
 * (or link the freestanding objects instead: ... main.c build/c-example/mlp.o build/c-example/classify.o)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "mlp.h"

static int read_file(const char *dir, const char *name, void *buf, size_t nbytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t got = fread(buf, 1, nbytes, f);
  fclose(f);
  return got == nbytes ? 0 : -1;
}

/* A 64-byte aligned workspace of the size the model asks for (NULL when it needs none). */
static void *workspace(size_t size) {
  return size ? aligned_alloc(64, (size + 63) / 64 * 64) : NULL;
}

static void describe(const char *model, const mcir_tensor_desc *d, int n, const char *what) {
  for (int i = 0; i < n; i++) {
    printf("%s %s[%d] %s: dtype %d shape [", model, what, i, d[i].name, d[i].dtype);
    for (int k = 0; k < d[i].rank; k++) printf(k ? ", %lld" : "%lld", (long long)d[i].shape[k]);
    printf("] (%lld bytes)\n", (long long)d[i].nbytes);
  }
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : ".";
  float x[64], logits[10], probs[10], expected_probs[10];
  int64_t label = -1, expected_label = -2;
  if (read_file(dir, "input.bin", x, sizeof x) || read_file(dir, "expected_probs.bin", expected_probs, sizeof expected_probs) ||
      read_file(dir, "expected_label.bin", &expected_label, sizeof expected_label)) {
    fprintf(stderr, "cannot read the input files in %s (run make_models.py first)\n", dir);
    return 2;
  }
  printf("mlp metadata: %s\n", mcir_mlp_metadata());
  describe("mlp", mcir_mlp_inputs(), mcir_mlp_num_inputs(), "input");
  describe("classify", mcir_classify_outputs(), mcir_classify_num_outputs(), "output");

  void *ws_mlp = workspace(mcir_mlp_workspace_size());
  void *ws_cls = workspace(mcir_classify_workspace_size());

  const void *mlp_in[] = {x};
  void *mlp_out[] = {logits};

  /* errors are return codes, never aborts */
  int rc = mcir_mlp_run(NULL, mlp_out, ws_mlp);
  printf("run with NULL inputs -> %d (MCIR_ERR_NULL_ARGUMENT = %d)\n", rc, MCIR_ERR_NULL_ARGUMENT);
  if (rc != MCIR_ERR_NULL_ARGUMENT) return 1;
  if (mcir_mlp_workspace_size() > 0) {
    rc = mcir_mlp_run(mlp_in, mlp_out, (char *)ws_mlp + 4);
    printf("run with a misaligned workspace -> %d (MCIR_ERR_WORKSPACE_ALIGNMENT = %d)\n", rc,
           MCIR_ERR_WORKSPACE_ALIGNMENT);
    if (rc != MCIR_ERR_WORKSPACE_ALIGNMENT) return 1;
  }

  rc = mcir_mlp_run(mlp_in, mlp_out, ws_mlp);
  if (rc != MCIR_OK) { fprintf(stderr, "mlp failed: %d\n", rc); return 1; }
  const void *cls_in[] = {logits};
  void *cls_out[] = {probs, &label};
  rc = mcir_classify_run(cls_in, cls_out, ws_cls);
  if (rc != MCIR_OK) { fprintf(stderr, "classify failed: %d\n", rc); return 1; }

  float worst = 0.0f;
  for (int i = 0; i < 10; i++) {
    float d = probs[i] - expected_probs[i];
    if (d < 0) d = -d;
    if (d > worst) worst = d;
    printf("p[%d] = %.6f\n", i, probs[i]);
  }
  printf("label %lld (expected %lld), max |probs - expected| = %g\n", (long long)label, (long long)expected_label, worst);
  free(ws_mlp);
  free(ws_cls);
  return (label == expected_label && worst <= 1e-5f) ? 0 : 1;
}
