/* Process-wide metrics registry rendered in Prometheus text format.
 * Metrics are registered once at start (not thread-safe) and updated on the loop thread.
 * A name may carry labels, e.g. "baton_broker_errors_total{class=\"pg\"}"; series that
 * share a base name are rendered together under one HELP/TYPE header, wherever they were
 * registered. Label families hold series whose label values appear at run time. */
#ifndef BT_METRICS_H
#define BT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct bt_counter { uint64_t value; } bt_counter_t;
typedef struct bt_gauge { double value; } bt_gauge_t;

#define BT_HIST_MAX_BUCKETS 16
typedef struct bt_histogram {
  size_t nbuckets;
  double bounds[BT_HIST_MAX_BUCKETS];
  uint64_t counts[BT_HIST_MAX_BUCKETS]; /* non-cumulative; rendered cumulative */
  uint64_t count;
  double sum;
} bt_histogram_t;

/* Registers a metric whose storage the caller owns (usually a field of a service's stats
 * struct, which must outlive the registry). `name` and `help` are borrowed string literals. */
void bt_metrics_counter(bt_counter_t *c, const char *name, const char *help);
void bt_metrics_gauge(bt_gauge_t *g, const char *name, const char *help);
/* A gauge computed when /metrics is scraped. */
void bt_metrics_gauge_fn(const char *name, const char *help, double (*fn)(void *arg), void *arg);
/* Default bounds (seconds, 0.5ms..10s) when bounds is NULL. */
void bt_metrics_histogram(bt_histogram_t *h, const char *name, const char *help,
                          const double *bounds, size_t nbounds);

static inline void bt_counter_add(bt_counter_t *c, uint64_t n) { c->value += n; }
static inline void bt_counter_inc(bt_counter_t *c) { c->value++; }
static inline void bt_gauge_set(bt_gauge_t *g, double v) { g->value = v; }
static inline void bt_gauge_add(bt_gauge_t *g, double v) { g->value += v; }
void bt_histogram_observe(bt_histogram_t *h, double v);

/* A family of series told apart by one label whose values appear at run time (per saga type,
 * per partition). At most max_series values get a series of their own; past that, new values
 * share one series labelled <label>="_other" and each such lookup counts in
 * baton_metrics_series_overflow_total, so a label fed by input cannot grow memory or the
 * scrape without bound. name, help and label are borrowed literals. */
typedef enum { BT_METRIC_COUNTER, BT_METRIC_GAUGE } bt_metric_type_t;
typedef struct bt_metric_family bt_metric_family_t;

/* Registers a family (storage for max_series + 1 series is allocated now). */
bt_metric_family_t *bt_metrics_family(const char *name, const char *help, bt_metric_type_t type,
                                      const char *label, size_t max_series);
/* The series of the label value (copied), created on first use. The pointer stays valid for
 * the life of the process: look a value up once (per saga type, per partition) and keep it.
 * The family's type must match the call. */
bt_counter_t *bt_metrics_family_counter(bt_metric_family_t *f, const char *value);
bt_gauge_t *bt_metrics_family_gauge(bt_metric_family_t *f, const char *value);

/* Appends every registered metric to out. Returns 0 or BT_ENOMEM. */
int bt_metrics_render(bt_buf_t *out) BT_MUSTCHECK;

/* Registers process_resident_memory_bytes and process_uptime_seconds. */
void bt_metrics_register_process(void);

/* Drops every registration, families included (tests only). */
void bt_metrics_reset(void);

#endif
