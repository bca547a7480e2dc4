/* Metrics registry: a flat array of registrations. The text format wants every series of a
 * metric together under one HELP/TYPE, so the renderer groups registrations by base name (the
 * name before the label set) in order of each name's first registration. A label family is one
 * registration that renders all of its series. */
#include "metrics.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { M_COUNTER, M_GAUGE, M_GAUGE_FN, M_HIST, M_FAMILY } metric_kind_t;

typedef struct {
  char *value; /* label value, copied; NULL for the overflow series until used */
  union {
    bt_counter_t counter;
    bt_gauge_t gauge;
  } u;
} series_t;

struct bt_metric_family {
  const char *label;
  bt_metric_type_t type;
  size_t max_series, nseries;
  series_t *series; /* max_series of them, then the overflow series */
  uint32_t *index;  /* open addressing: series number + 1, 0 for empty */
  size_t index_mask;
  bt_metric_family_t *next_alloc; /* every family, for bt_metrics_reset */
};

#define OVERFLOW_VALUE "_other"
#define MAX_FAMILY_SERIES 100000

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
static bt_metric_family_t *families;
static bt_counter_t series_overflow;

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

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

bt_metric_family_t *bt_metrics_family(const char *name, const char *help, bt_metric_type_t type,
                                      const char *label, size_t max_series) {
  BT_ASSERT(max_series > 0 && max_series <= MAX_FAMILY_SERIES);
  if (!families)
    bt_metrics_counter(&series_overflow, "baton_metrics_series_overflow_total",
                       "Lookups of a new label value past its family's bound, counted in the "
                       "family's _other series.");
  bt_metric_family_t *f = calloc(1, sizeof *f);
  size_t slots = 1;
  while (slots < 2 * max_series)
    slots *= 2;
  if (f) {
    f->series = calloc(max_series + 1, sizeof *f->series);
    f->index = calloc(slots, sizeof *f->index);
  }
  if (!f || !f->series || !f->index)
    bt_fatal("out of memory registering metric family %s", name);
  f->label = label;
  f->type = type;
  f->max_series = max_series;
  f->index_mask = slots - 1;
  f->next_alloc = families;
  families = f;
  add(M_FAMILY, name, help, f, NULL);
  return f;
}

static series_t *family_series(bt_metric_family_t *f, const char *value) {
  size_t i = (size_t)hash_str(value) & f->index_mask;
  for (; f->index[i]; i = (i + 1) & f->index_mask) {
    series_t *s = &f->series[f->index[i] - 1];
    if (strcmp(s->value, value) == 0)
      return s;
  }
  series_t *over = &f->series[f->max_series];
  char *copy = f->nseries < f->max_series ? strdup(value) : NULL;
  if (!copy) { /* past the bound (or out of memory): the shared series */
    over->value = OVERFLOW_VALUE;
    bt_counter_inc(&series_overflow);
    return over;
  }
  series_t *s = &f->series[f->nseries++];
  s->value = copy;
  f->index[i] = (uint32_t)f->nseries;
  return s;
}

bt_counter_t *bt_metrics_family_counter(bt_metric_family_t *f, const char *value) {
  BT_ASSERT(f->type == BT_METRIC_COUNTER);
  return &family_series(f, value)->u.counter;
}

bt_gauge_t *bt_metrics_family_gauge(bt_metric_family_t *f, const char *value) {
  BT_ASSERT(f->type == BT_METRIC_GAUGE);
  return &family_series(f, value)->u.gauge;
}

/* Appends a label value with the text format's escapes: backslash, quote, newline. */
static int append_label_value(bt_buf_t *out, const char *v) {
  int rc = 0;
  for (; *v && rc == 0; v++)
    rc = *v == '\\' ? bt_buf_append(out, "\\\\", 2)
         : *v == '"' ? bt_buf_append(out, "\\\"", 2)
         : *v == '\n' ? bt_buf_append(out, "\\n", 2)
                      : bt_buf_append(out, v, 1);
  return rc;
}

static int render_family_series(bt_buf_t *out, const metric_t *m, const series_t *s) {
  const bt_metric_family_t *f = m->ptr;
  int rc = bt_buf_appendf(out, "%s{%s=\"", m->name, f->label);
  rc = rc ? rc : append_label_value(out, s->value);
  if (rc == 0 && f->type == BT_METRIC_COUNTER)
    rc = bt_buf_appendf(out, "\"} %llu\n", (unsigned long long)s->u.counter.value);
  else if (rc == 0)
    rc = bt_buf_appendf(out, "\"} %.9g\n", s->u.gauge.value);
  return rc;
}

static int render_family(bt_buf_t *out, const metric_t *m) {
  const bt_metric_family_t *f = m->ptr;
  int rc = 0;
  for (size_t i = 0; i < f->nseries && rc == 0; i++)
    rc = render_family_series(out, m, &f->series[i]);
  if (rc == 0 && f->series[f->max_series].value) /* the overflow series, once used */
    rc = render_family_series(out, m, &f->series[f->max_series]);
  return rc;
}

/* Length of the base name, i.e. up to the label set. */
static size_t base_len(const char *name) { return strcspn(name, "{"); }

static const char *type_name(metric_kind_t k) {
  switch (k) {
  case M_COUNTER: return "counter";
  case M_GAUGE:
  case M_GAUGE_FN: return "gauge";
  case M_HIST: return "histogram";
  case M_FAMILY: break;
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

static const char *kind_type_name(const metric_t *m) {
  if (m->kind == M_FAMILY)
    return ((const bt_metric_family_t *)m->ptr)->type == BT_METRIC_COUNTER ? "counter" : "gauge";
  return type_name(m->kind);
}

static int render_series(bt_buf_t *out, const metric_t *m) {
  switch (m->kind) {
  case M_COUNTER:
    return bt_buf_appendf(out, "%s %llu\n", m->name,
                          (unsigned long long)((bt_counter_t *)m->ptr)->value);
  case M_GAUGE: return bt_buf_appendf(out, "%s %.9g\n", m->name, ((bt_gauge_t *)m->ptr)->value);
  case M_GAUGE_FN: return bt_buf_appendf(out, "%s %.9g\n", m->name, m->fn(m->ptr));
  case M_HIST: return render_hist(out, m);
  case M_FAMILY: return render_family(out, m);
  }
  return 0;
}

static bool same_base(const metric_t *a, const metric_t *b) {
  size_t bl = base_len(a->name);
  return base_len(b->name) == bl && strncmp(a->name, b->name, bl) == 0;
}

int bt_metrics_render(bt_buf_t *out) {
  for (size_t i = 0; i < nmetrics; i++) {
    const metric_t *m = &metrics[i];
    /* A base name is rendered whole where it first appears: HELP/TYPE, then every series. */
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++)
      seen = same_base(&metrics[j], m);
    if (seen)
      continue;
    size_t bl = base_len(m->name);
    int rc = bt_buf_appendf(out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)bl, m->name, m->help,
                            (int)bl, m->name, kind_type_name(m));
    for (size_t j = i; j < nmetrics && rc == 0; j++)
      if (same_base(&metrics[j], m))
        rc = render_series(out, &metrics[j]);
    if (rc)
      return rc;
  }
  return 0;
}

/* Current resident set size in bytes, from /proc/self/statm. */
static size_t process_rss_bytes(void) {
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

static double rss_fn(void *arg) {
  BT_UNUSED(arg);
  return (double)process_rss_bytes();
}
static double uptime_fn(void *arg) {
  BT_UNUSED(arg);
  return now_seconds() - process_start;
}

void bt_metrics_register_process(void) {
  process_start = now_seconds();
  bt_metrics_gauge_fn("process_resident_memory_bytes", "Resident set size in bytes.", rss_fn, NULL);
  bt_metrics_gauge_fn("process_uptime_seconds", "Seconds since the process started.", uptime_fn,
                      NULL);
}

void bt_metrics_reset(void) {
  nmetrics = 0;
  while (families) {
    bt_metric_family_t *f = families;
    families = f->next_alloc;
    for (size_t i = 0; i < f->nseries; i++)
      free(f->series[i].value);
    free(f->series);
    free(f->index);
    free(f);
  }
}
