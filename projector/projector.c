/* projector_start: wires the process. The schema and each projection's live version are
 * prepared before the loop runs (blocking, start-up only); then the shared clients are
 * created: one Redis client and one Postgres pool for every projection (a sink write is one
 * request, so sharing costs nothing and bounds connections), and one producer for dead
 * letters. Each projection gets its own runner (proj_runner.c) with its own consumer group
 * and offsets. */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proj_rebuild.h"
#include "proj_runner.h"
#include "proj_schema.h"
#include "projector.h"

static bool any_sink(const projector_t *p, unsigned sink) {
  for (size_t i = 0; i < p->defs.ndefs; i++)
    if (projector_has_sink(&p->defs.defs[i], sink))
      return true;
  return false;
}

static void register_metrics(projector_t *p) {
  projector_stats_t *s = &p->stats;
  bt_metrics_counter(&s->batches, "baton_projector_batches_total",
                     "Sink writes committed (a Lua script or a Postgres transaction).");
  bt_metrics_counter(&s->events, "baton_projector_events_total",
                     "Events consumed and applied (or found already applied) by every sink.");
  bt_metrics_counter(&s->dead_letters, "baton_projector_dead_letters_total",
                     "Poison events written to the dead-letter topic.");
  bt_metrics_counter(&s->sink_errors, "baton_projector_sink_errors_total",
                     "Sink writes that failed for a transient reason and were retried.");
  p->offset_family = bt_metrics_family(
      "baton_projector_sink_offset", "Next offset to apply, per projection, sink and partition.",
      BT_METRIC_GAUGE, "partition", 4096);
  p->lag_family = bt_metrics_family("baton_projector_lag_messages",
                                    "Messages behind the high watermark, per projection and "
                                    "partition (from the consumer's cached watermarks).",
                                    BT_METRIC_GAUGE, "partition", 4096);
  bt_metrics_counter(&s->conflicts, "baton_projector_sink_conflicts_total",
                     "Sink writes refused by their offset or document guard, then retried.");
}

static int start_redis(projector_t *p) {
  char err[256];
  bt_redis_config_t rc = {
      .url = p->cfg.redis_url,
      .name = "redis",
      .max_pending_bytes = (size_t)p->cfg.redis_max_pending_bytes,
      /* A batch script can take a while on a large batch; the timeout must exceed it. */
      .command_timeout_ms = 10000,
  };
  if (bt_redis_new(&p->redis, &p->app, &rc, err) != 0) {
    bt_log_error("cannot create the Redis client", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  return 0;
}

static int start_pg(projector_t *p) {
  bt_pg_stats_register(&p->pg_stats, "projector");
  bt_pg_pool_config_t pc = {
      .dsn = p->cfg.pg_dsn,
      .name = "projector",
      .size = (unsigned)p->cfg.pg_pool_size,
      .queue_max = (unsigned)p->cfg.pg_queue_max,
      .stats = &p->pg_stats,
  };
  if (bt_pg_pool_new(&p->pg, p->app.loop, &pc) != 0) {
    bt_log_error("cannot create the Postgres pool", NULL);
    return BT_EINVAL;
  }
  bt_pg_pool_attach(p->pg, &p->app, "postgres");
  return 0;
}

static int start_dlq(projector_t *p) {
  char err[256];
  bt_kafka_producer_config_t kc = {
      .name = "kafka_dlq",
      .brokers = p->cfg.kafka_brokers,
      .properties = p->cfg.kafka_properties,
      .delivery_timeout_ms = (uint32_t)p->cfg.kafka_delivery_timeout_ms,
  };
  if (bt_kafka_producer_new(&p->dlq, &p->app, &kc, err) != 0) {
    bt_log_error("cannot create the dead-letter producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_producer_register_metrics(p->dlq);
  return 0;
}

int projector_start(projector_t *p) {
  char err[512];
  p->versions = calloc(p->defs.ndefs, sizeof *p->versions);
  p->runners = calloc(p->defs.ndefs, sizeof *p->runners);
  int *building = calloc(p->defs.ndefs, sizeof *building);
  proj_retired_t *retired = calloc(p->defs.ndefs, sizeof *retired);
  if (!p->versions || !p->runners || !building || !retired) {
    free(building);
    free(retired);
    return BT_ENOMEM;
  }
  if (proj_schema_prepare(p->cfg.pg_dsn, &p->defs, p->versions, building, retired, err,
                          sizeof err) != 0) {
    bt_log_error("cannot prepare the projections' tables", "{s:s}", "error", err);
    free(building);
    proj_schema_retired_free(retired, p->defs.ndefs);
    free(retired);
    return BT_EIO;
  }
  register_metrics(p);
  int rc = 0;
  if (any_sink(p, PROJ_SINK_REDIS))
    rc = start_redis(p);
  if (!rc && any_sink(p, PROJ_SINK_POSTGRES))
    rc = start_pg(p);
  if (!rc)
    rc = start_dlq(p);
  for (size_t i = 0; !rc && i < p->defs.ndefs; i++) {
    rc = proj_runner_new(&p->runners[i], p, &p->defs.defs[i], p->versions[i], false);
    if (!rc)
      p->nrunners++;
  }
  if (!rc)
    rc = proj_rebuild_start(p, building, retired);
  free(building);
  proj_schema_retired_free(retired, p->defs.ndefs);
  free(retired);
  return rc;
}

void projector_free(projector_t *p) {
  proj_rebuild_free(p);
  for (size_t i = 0; i < p->nrunners; i++)
    proj_runner_free(p->runners[i]);
  free(p->runners);
  free(p->versions);
  proj_def_set_free(&p->defs);
}
