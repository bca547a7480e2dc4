/* Metrics registry: a flat array of registrations, rendered in registration order.
 * Series with the same base name must be registered next to each other's family, so the
 * renderer emits HELP/TYPE once per base name by remembering which names it has printed. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { M_COUNTER, M_GAUGE, M_GAUGE_FN, M_HIST } metric_kind_t;

typedef struct {
  metric_kind_t kind;
  const char *name;
  const char *help;
  void *ptr;
  double (*fn)(void *);
} metric_t;

#define MAX_METRICS 512
static metric_t metrics[MAX_METRICS];
static size_t nmetrics;
static double process_start;

static void add(metric_kind_t kind, const char *name, const char *help, void *ptr,
                double (*fn)(void *)) {
  BT_ASSERT(nmetrics < MAX_METRICS);
  metrics[nmetrics++] = (metric_t){kind, name, help, ptr, fn};
}

void bt_metrics_counter(bt_counter_t *c, const char *name, const char *help) {
  add(M_COUNTER, name, help, c, NULL);
}
void bt_metrics_gauge(bt_gauge_t *g, const char *name, const char *help) {
  add(M_GAUGE, name, help, g, NULL);
}
void bt_metrics_gauge_fn(const char *name, const char *help, double (*fn)(void *), void *arg) {
  add(M_GAUGE_FN, name, help, arg, fn);
}

static const double default_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05,   0.1,   0.25,   0.5,   1,    2.5, 5, 10};

void bt_metrics_histogram(bt_histogram_t *h, const char *name, const char *help,
                          const double *bounds, size_t nbounds) {
  memset(h, 0, sizeof *h);
  if (!bounds) {
    bounds = default_bounds;
    nbounds = BT_ARRAY_LEN(default_bounds);
  }
  BT_ASSERT(nbounds <= BT_HIST_MAX_BUCKETS);
  memcpy(h->bounds, bounds, nbounds * sizeof(double));
  h->nbuckets = nbounds;
  add(M_HIST, name, help, h, NULL);
}

void bt_histogram_observe(bt_histogram_t *h, double v) {
  h->count++;
  h->sum += v;
  for (size_t i = 0; i < h->nbuckets; i++) {
    if (v <= h->bounds[i]) {
      h->counts[i]++;
      return;
    }
  }
}

/* Length of the base name, i.e. up to the label set. */
static size_t base_len(const char *name) { return strcspn(name, "{"); }

static const char *type_name(metric_kind_t k) {
  switch (k) {
  case M_COUNTER: return "counter";
  case M_GAUGE:
  case M_GAUGE_FN: return "gauge";
  case M_HIST: return "histogram";
  }
  return "untyped";
}

static int render_hist(bt_buf_t *out, const metric_t *m) {
  const bt_histogram_t *h = m->ptr;
  size_t bl = base_len(m->name);
  const char *labels = m->name[bl] == '{' ? m->name + bl + 1 : NULL; /* "a=\"b\"}" */
  size_t llen = labels ? strlen(labels) - 1 : 0;
  uint64_t cum = 0;
  int rc = 0;
  for (size_t i = 0; i <= h->nbuckets && rc == 0; i++) {
    char le[32];
    if (i < h->nbuckets) {
      cum += h->counts[i];
      snprintf(le, sizeof le, "%g", h->bounds[i]);
    } else {
      cum = h->count;
      snprintf(le, sizeof le, "+Inf");
    }
    rc = bt_buf_appendf(out, "%.*s_bucket{%.*s%sle=\"%s\"} %llu\n", (int)bl, m->name, (int)llen,
                        labels ? labels : "", labels ? "," : "", le, (unsigned long long)cum);
  }
  if (rc == 0)
    rc = bt_buf_appendf(out, "%.*s_sum%s %.9g\n%.*s_count%s %llu\n", (int)bl, m->name,
                        m->name + bl, h->sum, (int)bl, m->name, m->name + bl,
                        (unsigned long long)h->count);
  return rc;
}

int bt_metrics_render(bt_buf_t *out) {
  for (size_t i = 0; i < nmetrics; i++) {
    const metric_t *m = &metrics[i];
    size_t bl = base_len(m->name);
    /* HELP/TYPE only for the first series of each base name. */
    int seen = 0;
    for (size_t j = 0; j < i && !seen; j++)
      seen = base_len(metrics[j].name) == bl && strncmp(metrics[j].name, m->name, bl) == 0;
    int rc = 0;
    if (!seen)
      rc = bt_buf_appendf(out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)bl, m->name, m->help,
                          (int)bl, m->name, type_name(m->kind));
    if (rc)
      return rc;
    switch (m->kind) {
    case M_COUNTER:
      rc = bt_buf_appendf(out, "%s %llu\n", m->name,
                          (unsigned long long)((bt_counter_t *)m->ptr)->value);
      break;
    case M_GAUGE: rc = bt_buf_appendf(out, "%s %.9g\n", m->name, ((bt_gauge_t *)m->ptr)->value); break;
    case M_GAUGE_FN: rc = bt_buf_appendf(out, "%s %.9g\n", m->name, m->fn(m->ptr)); break;
    case M_HIST: rc = render_hist(out, m); break;
    }
    if (rc)
      return rc;
  }
  return 0;
}

size_t bt_process_rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f)
    return 0;
  unsigned long size = 0, rss = 0;
  int n = fscanf(f, "%lu %lu", &size, &rss);
  fclose(f);
  return n == 2 ? rss * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rss_fn(void *arg) { return (double)bt_process_rss_bytes(); }
static double uptime_fn(void *arg) { return now_seconds() - process_start; }

void bt_metrics_register_process(void) {
  process_start = now_seconds();
  bt_metrics_gauge_fn("process_resident_memory_bytes", "Resident set size in bytes.", rss_fn, NULL);
  bt_metrics_gauge_fn("process_uptime_seconds", "Seconds since the process started.", uptime_fn,
                      NULL);
}

void bt_metrics_reset(void) { nmetrics = 0; }
