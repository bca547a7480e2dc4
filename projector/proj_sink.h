/* proj_sink_t: one place a projection's read model lives (Redis or Postgres), as the runner
 * sees it. A sink keeps its own next offset per partition (its exactly-once guard: a write
 * moves offsets from what the writer saw to the batch's end, atomically with the effects, or
 * fails with BT_ECONFLICT and changes nothing), hands out the current documents of a batch's
 * keys (the old state the effects are computed from), and applies a batch's effects. Every
 * operation is asynchronous on the loop and completes exactly once. */
#ifndef PROJ_SINK_H
#define PROJ_SINK_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "errors.h"
#include "metrics.h"
#include "proj_apply.h"
#include "proj_def.h"

struct projector;
typedef struct proj_sink proj_sink_t;

/* The next offset to apply of one partition, as a sink holds it. */
typedef struct proj_offset {
  char *topic;
  int32_t partition;
  int64_t next;
  bt_gauge_t *gauge;           /* baton_projector_sink_offset{...}: set on every change */
} proj_offset_t;

typedef struct proj_offsets {
  proj_offset_t *v;
  size_t n, cap;
} proj_offsets_t;

/* The next offset of topic/partition: 0 when the sink holds nothing of it. */
int64_t proj_offsets_get(const proj_offsets_t *o, const char *topic, int32_t partition);
/* Sets it, adding the partition when new. Returns 0 or BT_ENOMEM. */
int proj_offsets_set(proj_offsets_t *o, const char *topic, int32_t partition,
                     int64_t next) BT_MUSTCHECK;
void proj_offsets_clear(proj_offsets_t *o);

/* One partition's move in a write: the sink must hold `from` (0: nothing) and will hold `to`. */
typedef struct proj_move {
  const char *topic;
  int32_t partition;
  int64_t from, to;
} proj_move_t;

/* What one write applies. Borrowed for the call's duration. */
typedef struct proj_sink_batch {
  const proj_move_t *moves;    /* sorted by (topic, partition); at least one */
  size_t nmoves;
  const proj_effects_t *effects;
  json_t *old;                 /* key -> document the effects were computed from (absent: no
                                  document), for the sinks that compare before writing */
  json_t *keys;                /* the batch's keys (a JSON array of strings) */
  int64_t event_time_ms;       /* newest event time of the batch (-1: unknown) */
} proj_sink_batch_t;

/* err: 0; BT_ECONFLICT when the guard refused (offsets or documents moved: reload, retry);
 * another BT_E* for a transient failure (sink down, timeout; the outcome may be unknown, so
 * the caller reloads the offsets before retrying). */
typedef void (*proj_sink_cb)(proj_sink_t *s, int err, void *arg);
/* docs: key -> document for the keys that have one (borrowed for the callback). */
typedef void (*proj_sink_docs_cb)(proj_sink_t *s, int err, json_t *docs, void *arg);

typedef struct proj_sink_ops {
  const char *name;            /* "redis", "postgres" */
  /* Replaces s->offsets with what the sink holds. */
  int (*load_offsets)(proj_sink_t *s, proj_sink_cb cb, void *arg);
  /* The current documents of keys (a JSON array of strings). */
  int (*fetch)(proj_sink_t *s, json_t *keys, proj_sink_docs_cb cb, void *arg);
  /* Applies b under the guard. */
  int (*write)(proj_sink_t *s, const proj_sink_batch_t *b, proj_sink_cb cb, void *arg);
  void (*free)(proj_sink_t *s);
} proj_sink_ops_t;

struct proj_sink {
  const proj_sink_ops_t *ops;
  struct projector *p;
  const proj_def_t *def;
  int version;
  proj_offsets_t offsets;      /* as last loaded or written */
  bool loaded;                 /* offsets reflect the sink (false after a failure) */
  bool building;               /* a rebuild's version: state building, `current` untouched */
  char errstr[256];            /* why the last operation failed */
  bt_metric_family_t *offset_family; /* per partition applied offsets of this sink */
  char offset_label[160];      /* "{P}:{sink}:" prefix of the family's label values */
};

/* A sink operation in flight: the caller's callback (one of the two) and its argument. */
typedef struct proj_sink_op {
  proj_sink_t *s;
  proj_sink_cb cb;
  proj_sink_docs_cb docs_cb;
  json_t *keys;                /* fetch: the keys asked for (a reference) */
  void *arg;
} proj_sink_op_t;

/* A new operation (malloc'd; the sink frees it after calling back), or NULL. */
proj_sink_op_t *proj_sink_op_new(proj_sink_t *s, proj_sink_cb cb, proj_sink_docs_cb docs_cb,
                                 void *arg);

/* The two sinks. Return 0 or BT_ENOMEM. */
int proj_sink_redis_new(proj_sink_t **out, struct projector *p, const proj_def_t *d,
                        int version) BT_MUSTCHECK;
int proj_sink_pg_new(proj_sink_t **out, struct projector *p, const proj_def_t *d,
                     int version) BT_MUSTCHECK;

/* Shared set-up of the common part, and the gauge of a partition's applied offset. */
void proj_sink_init(proj_sink_t *s, const proj_sink_ops_t *ops, struct projector *p,
                    const proj_def_t *d, int version);
/* Sets a partition's offset and its gauge. Returns 0 or BT_ENOMEM. */
int proj_sink_set_offset(proj_sink_t *s, const char *topic, int32_t partition,
                         int64_t next) BT_MUSTCHECK;

#endif
