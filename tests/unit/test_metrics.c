/* Metrics rendering tests: the output is parsed back and checked against the Prometheus text
 * format's structure (one HELP and one TYPE per metric, every series of a metric together
 * right after them), with series registered out of order and label families whose series
 * appear at run time up to their bound, then overflow into one series. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "testsupport.h"

typedef struct {
  char name[128];
  int helps, types;
  int block; /* the block (run of consecutive lines) the metric was seen in */
} fam_seen_t;

static fam_seen_t seen[64];
static int nseen;

static fam_seen_t *lookup(const char *name, size_t len) {
  for (int i = 0; i < nseen; i++)
    if (strlen(seen[i].name) == len && strncmp(seen[i].name, name, len) == 0)
      return &seen[i];
  assert_true(nseen < 64);
  fam_seen_t *f = &seen[nseen++];
  memset(f, 0, sizeof *f);
  memcpy(f->name, name, len < sizeof f->name ? len : sizeof f->name - 1);
  f->block = -1;
  return f;
}

/* The metric a sample belongs to: its name without the histogram suffixes. */
static size_t sample_base(const char *line, const char *current) {
  size_t n = strcspn(line, "{ ");
  static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
  for (size_t i = 0; i < 3; i++) {
    size_t sl = strlen(suffixes[i]);
    if (n > sl && strncmp(line + n - sl, suffixes[i], sl) == 0 &&
        strlen(current) == n - sl && strncmp(line, current, n - sl) == 0)
      return n - sl;
  }
  return n;
}

/* Parses the exposition; fails on any structural error. Returns the number of samples. */
static int check_structure(char *text) {
  nseen = 0;
  char current[128] = "";
  int block = 0, samples = 0;
  for (char *line = text, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    assert_non_null(nl); /* every line ends in a newline */
    *nl = '\0';
    if (strncmp(line, "# HELP ", 7) == 0) {
      size_t n = strcspn(line + 7, " ");
      fam_seen_t *f = lookup(line + 7, n);
      if (++f->helps != 1)
        fail_msg("second HELP for %s", f->name);
      f->block = ++block;
      snprintf(current, sizeof current, "%s", f->name);
    } else if (strncmp(line, "# TYPE ", 7) == 0) {
      size_t n = strcspn(line + 7, " ");
      fam_seen_t *f = lookup(line + 7, n);
      if (++f->types != 1 || strcmp(f->name, current) != 0)
        fail_msg("TYPE for %s not right after its HELP", f->name);
      const char *type = line + 7 + n + 1;
      assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                  strcmp(type, "histogram") == 0);
    } else {
      size_t n = sample_base(line, current);
      fam_seen_t *f = lookup(line, n);
      if (f->block != block || strcmp(f->name, current) != 0)
        fail_msg("sample \"%s\" is not in its metric's block (after %s)", line, current);
      /* name{labels} value: the labels close and a number follows one space. */
      const char *sp = strrchr(line, ' ');
      assert_non_null(sp);
      char *end;
      strtod(sp + 1, &end);
      assert_true(end > sp + 1 && *end == '\0');
      if (line[strcspn(line, "{ ")] == '{')
        assert_true(sp[-1] == '}');
      samples++;
    }
  }
  for (int i = 0; i < nseen; i++)
    if (seen[i].helps != 1 || seen[i].types != 1)
      fail_msg("%s has %d HELP and %d TYPE lines", seen[i].name, seen[i].helps, seen[i].types);
  return samples;
}

static bt_counter_t c_pg, c_kafka, c_plain;
static bt_gauge_t g_plain;
static bt_histogram_t h_lat, h_lat2;

static void test_series_of_one_metric_render_together(void **state) {
  bt_metrics_reset();
  /* Registered interleaved, as components register them at different times. */
  bt_metrics_counter(&c_pg, "t_errors_total{class=\"pg\"}", "Errors.");
  bt_metrics_gauge(&g_plain, "t_depth", "Depth.");
  bt_metrics_histogram(&h_lat, "t_latency_seconds{op=\"a\"}", "Latency.", NULL, 0);
  bt_metrics_counter(&c_kafka, "t_errors_total{class=\"kafka\"}", "Errors.");
  bt_metrics_counter(&c_plain, "t_plain_total", "Plain.");
  bt_metrics_histogram(&h_lat2, "t_latency_seconds{op=\"b\"}", "Latency.", NULL, 0);
  bt_counter_add(&c_kafka, 3);
  bt_histogram_observe(&h_lat2, 0.003);
  bt_buf_t b;
  bt_buf_init(&b, 0);
  assert_int_equal(bt_metrics_render(&b), 0);
  char *text = strdup(b.data);
  assert_true(check_structure(text) > 0);
  free(text);
  assert_non_null(strstr(b.data, "t_errors_total{class=\"pg\"} 0\nt_errors_total{class=\"kafka\"} 3\n"));
  assert_non_null(strstr(b.data, "t_latency_seconds_bucket{op=\"b\",le=\"0.005\"} 1\n"));
  bt_buf_free(&b);
  bt_metrics_reset();
}

static void test_family_bounded_with_overflow(void **state) {
  bt_metrics_reset();
  bt_counter_t before = {0};
  bt_metrics_counter(&before, "t_before_total", "Before.");
  bt_metric_family_t *steps =
      bt_metrics_family("t_saga_steps_total", "Saga steps.", BT_METRIC_COUNTER, "saga_type", 3);
  bt_metric_family_t *lag =
      bt_metrics_family("t_partition_lag", "Lag.", BT_METRIC_GAUGE, "partition", 100);
  bt_counter_t after = {0};
  bt_metrics_counter(&after, "t_saga_steps_total{saga_type=\"static\"}", "Saga steps.");

  bt_counter_t *order = bt_metrics_family_counter(steps, "order");
  bt_counter_add(order, 2);
  assert_ptr_equal(bt_metrics_family_counter(steps, "order"), order); /* same series */
  bt_counter_inc(bt_metrics_family_counter(steps, "pay"));
  bt_counter_inc(bt_metrics_family_counter(steps, "we\"ird\\\nname"));
  /* Past the bound of 3: two new values share the overflow series. */
  bt_counter_t *o1 = bt_metrics_family_counter(steps, "refund");
  bt_counter_t *o2 = bt_metrics_family_counter(steps, "ship");
  assert_ptr_equal(o1, o2);
  bt_counter_add(o1, 5);
  /* Known values still get their own series after the bound is reached. */
  assert_ptr_equal(bt_metrics_family_counter(steps, "pay"),
                   bt_metrics_family_counter(steps, "pay"));
  for (int p = 0; p < 50; p++) {
    char v[16];
    snprintf(v, sizeof v, "%d", p);
    bt_gauge_set(bt_metrics_family_gauge(lag, v), p * 10);
  }

  bt_buf_t b;
  bt_buf_init(&b, 0);
  assert_int_equal(bt_metrics_render(&b), 0);
  char *text = strdup(b.data);
  int samples = check_structure(text);
  free(text);
  /* before + overflow counter + 4 steps (3 + _other) + static step + 50 lag */
  assert_int_equal(samples, 1 + 1 + 4 + 1 + 50);
  assert_non_null(strstr(b.data, "t_saga_steps_total{saga_type=\"order\"} 2\n"));
  assert_non_null(strstr(b.data, "t_saga_steps_total{saga_type=\"we\\\"ird\\\\\\nname\"} 1\n"));
  assert_non_null(strstr(b.data, "t_saga_steps_total{saga_type=\"_other\"} 5\n"));
  assert_null(strstr(b.data, "refund"));
  assert_non_null(strstr(b.data, "baton_metrics_series_overflow_total 2\n"));
  assert_non_null(strstr(b.data, "t_partition_lag{partition=\"49\"} 490\n"));
  bt_buf_free(&b);
  bt_metrics_reset();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_series_of_one_metric_render_together),
      cmocka_unit_test(test_family_bounded_with_overflow),
  };
  return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
