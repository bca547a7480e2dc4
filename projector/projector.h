/* projector_t: the baton-projector process: its configuration, the loaded projection
 * definitions and the runtime components every module shares (app, HTTP server, Redis
 * client, Postgres pool, the dead-letter producer) plus one runner per projection. The read
 * API (proj_read.c) registers its routes on `http` and reads through `redis`; it starts after
 * projector_start() with one call in main.c. */
#ifndef PROJECTOR_H
#define PROJECTOR_H

#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "config.h"
#include "http_server.h"
#include "kafka_producer.h"
#include "metrics.h"
#include "pg_pool.h"
#include "proj_def.h"
#include "proj_read.h"
#include "redis_client.h"

typedef struct proj_runner proj_runner_t;
typedef struct proj_rebuild proj_rebuild_t;

typedef struct projector_config {
  bt_common_config_t common;
  char *projections;           /* BATON_PROJECTIONS: directory of definitions */
  char *pg_dsn;                /* BATON_PG_DSN */
  char *redis_url;             /* BATON_REDIS_URL */
  char *kafka_brokers;         /* BATON_KAFKA_BROKERS */
  char *kafka_properties;      /* BATON_KAFKA_PROPERTIES */
  char *dlq_topic;             /* BATON_PROJECTOR_DLQ_TOPIC */
  char *instance_id;           /* BATON_PROJECTOR_INSTANCE_ID: static group membership */
  int64_t pg_pool_size;
  int64_t pg_queue_max;
  bool migrate;
  int64_t batch_max;           /* events applied per sink write */
  int64_t max_in_flight;       /* fetched, not yet applied events per projection */
  int64_t redis_max_pending_bytes;
  int64_t retry_min_ms, retry_max_ms;
  int64_t kafka_delivery_timeout_ms;
  int64_t session_timeout_ms;  /* BATON_PROJECTOR_SESSION_TIMEOUT */
  char *api_tokens;            /* BATON_API_TOKENS: bearer tokens of the /v1 routes */
  char *api_tokens_file;       /* BATON_API_TOKENS_FILE */
  proj_read_config_t read;     /* the read API (proj_read.h) */
  int64_t rebuild_grace_ms;    /* BATON_PROJECTOR_REBUILD_GRACE */
} projector_config_t;

/* Process-wide counters, rendered as baton_projector_*. Per projection and per partition
 * figures live in the runners (metric families). */
typedef struct projector_stats {
  bt_counter_t batches;        /* sink writes committed (both sinks count) */
  bt_counter_t events;         /* events applied or skipped as already applied */
  bt_counter_t dead_letters;   /* events sent to the dead-letter topic */
  bt_counter_t sink_errors;    /* transient sink failures (each is retried) */
  bt_counter_t conflicts;      /* sink writes refused by their guard and retried */
} projector_stats_t;

typedef struct projector {
  projector_config_t cfg;
  bt_app_t app;
  bt_http_server_t *http;
  bt_redis_t *redis;           /* NULL when no projection has the redis sink */
  bt_pg_pool_t *pg;            /* NULL when no projection has the postgres sink */
  bt_pg_stats_t pg_stats;
  bt_kafka_producer_t *dlq;    /* dead letters */
  proj_def_set_t defs;
  int *versions;               /* live version of defs.defs[i] (from projector.current) */
  proj_runner_t **runners;     /* the live version's runner of defs.defs[i] */
  proj_rebuild_t **rebuilds;   /* the rebuild slot of defs.defs[i] (proj_rebuild.c) */
  size_t nrunners;
  projector_stats_t stats;
  bt_metric_family_t *offset_family; /* baton_projector_sink_offset{partition="P:sink:t:n"} */
  bt_metric_family_t *lag_family;    /* baton_projector_lag_messages{partition="P:t:n"} */
  bool consumer_metrics;       /* the first runner's consumer registered the Kafka metrics */
  proj_read_t *read;           /* the read API; NULL when no projection has the redis sink */
} projector_t;

/* The configuration table (proj_config.c); the returned array is static. */
const bt_config_var_t *projector_config_vars(projector_t *p, size_t *n);

/* Creates the shared clients (Redis, Postgres, the dead-letter producer) and one runner per
 * definition, and registers the metrics. p->app and p->http must be started; the Postgres
 * schema must be migrated (proj_schema.h). Returns 0 or a BT_E* code after logging why. */
int projector_start(projector_t *p) BT_MUSTCHECK;

/* Frees what projector_start and main allocated, after bt_app_run returned. */
void projector_free(projector_t *p);

/* Whether definition d writes to the sink (PROJ_SINK_*). */
static inline bool projector_has_sink(const proj_def_t *d, unsigned sink) {
  return (d->sinks & sink) != 0;
}

#endif
