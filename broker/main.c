/* baton-broker: entry point. Parses the configuration, creates the runtime components the
 * broker needs (HTTP server, Kafka producer, Postgres pool), starts its modules and runs the
 * loop until a signal drains it. `baton-broker migrate` applies the schema and exits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "metrics.h"

static broker_t broker;

static int start_kafka(broker_t *b) {
  /* Publish's producer: its queue holds publish's admission limit, so a request we admit
   * is never refused half-way for a full local queue. The relays have a producer of their
   * own (relay.c), so neither side can take the other's room. */
  bt_kafka_producer_config_t kc = broker_producer_config(
      b, (uint64_t)b->cfg.max_inflight_msgs, (uint64_t)b->cfg.max_inflight_bytes);
  char err[256];
  if (bt_kafka_producer_new(&b->producer, &b->app, &kc, err) != 0) {
    bt_log_error("cannot create the Kafka producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_producer_register_metrics(b->producer);
  return 0;
}

/* The start-up migration runs on a worker thread while the loop connects the pool and Kafka:
 * readiness then costs the slower of the two instead of a blocking connection and the
 * migration's round trips followed by the pool's own connection (about half the exec to
 * /readyz time on an idle machine). Until it is done /readyz says "schema": false, the
 * store's routes answer 503 and the relays wait; a failure ends the process (exit 1) as the
 * synchronous migration did. */
typedef struct migration {
  uv_work_t work;
  broker_t *b;
  int rc;
  bool done, holding;
  char err[512];
} migration_t;

static migration_t migration;

static void migrate_work(uv_work_t *w) {
  migration_t *m = w->data;
  m->rc = broker_store_migrate(m->b->cfg.pg_dsn, m->err, sizeof m->err);
}

static void migrate_done(uv_work_t *w, int status) {
  migration_t *m = w->data;
  broker_t *b = m->b;
  m->done = true;
  bt_app_hold_while(&b->app, &m->holding, false);
  if (status != 0 || m->rc != 0) {
    bt_log_error("schema migration failed", "{s:s}", "error",
                 status != 0 ? uv_strerror(status) : m->err);
    bt_app_fail(&b->app, 1, "schema migration failed");
    return;
  }
  b->schema_ready = true;
  bt_log_info("schema ready", NULL);
  broker_relay_go(b);
}

/* A drain waits for the migration: its thread cannot be stopped half-way. */
static void migrate_drain(bt_app_t *app, void *arg) {
  migration_t *m = arg;
  bt_app_hold_while(app, &m->holding, !m->done);
}

static bool schema_ready(void *arg) { return ((broker_t *)arg)->schema_ready; }

static int start_migration(broker_t *b) {
  if (!b->cfg.migrate) {
    b->schema_ready = true;
    return 0;
  }
  migration.b = b;
  migration.work.data = &migration;
  int rc = uv_queue_work(b->app.loop, &migration.work, migrate_work, migrate_done);
  if (rc != 0) {
    bt_log_error("cannot start the schema migration", "{s:s}", "error", uv_strerror(rc));
    return BT_EIO;
  }
  bt_app_add_dependency(&b->app, "schema", schema_ready, b);
  bt_app_on_shutdown(&b->app, migrate_drain, NULL, &migration);
  return 0;
}

static int start_pg(broker_t *b) {
  bt_pg_stats_register(&b->pg_stats, "store");
  bt_pg_pool_config_t pc = {
      .dsn = b->cfg.pg_dsn,
      .name = "store",
      .size = (unsigned)b->cfg.pg_pool_size,
      .queue_max = (unsigned)b->cfg.append_queue_max,
      .stats = &b->pg_stats,
  };
  if (bt_pg_pool_new(&b->pg, b->app.loop, &pc) != 0) {
    bt_log_error("cannot create the Postgres pool", NULL);
    return BT_EINVAL;
  }
  bt_pg_pool_attach(b->pg, &b->app, "postgres");
  return 0;
}

static int cmd_migrate(void) {
  char err[512];
  if (!broker.cfg.pg_dsn) {
    fprintf(stderr, "baton-broker migrate: BATON_PG_DSN is required\n");
    return 2;
  }
  if (broker_store_migrate(broker.cfg.pg_dsn, err, sizeof err) != 0) {
    bt_log_error("schema migration failed", "{s:s}", "error", err);
    return 1;
  }
  bt_log_info("schema is up to date", NULL);
  return 0;
}

int main(int argc, char **argv) {
  broker_t *b = &broker;
  size_t nvars;
  const bt_config_var_t *vars = broker_config_vars(b, &nvars);
  bool migrate_only = argc > 1 && strcmp(argv[1], "migrate") == 0;
  if (argc > 1 && !migrate_only && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0) {
    fprintf(stderr, "usage: baton-broker [migrate | --help]\n");
    return 2;
  }
  bt_config_startup("baton-broker", argc, argv, vars, nvars, &b->cfg.common);
  if (migrate_only)
    return cmd_migrate();

  bt_metrics_register_process();
  bt_app_init(&b->app, "baton-broker", (uint64_t)b->cfg.common.shutdown_timeout_ms);
  /* First: the migration's connection is the longest step before /readyz. */
  if (b->cfg.pg_dsn && start_migration(b) != 0)
    return 1;
  bt_http_limits_t limits;
  bt_common_config_limits(&b->cfg.common, &limits);
  char err[256];
  if (bt_http_server_start(&b->http, &b->app, b->cfg.common.http_host, (int)b->cfg.common.http_port,
                           &limits, err) != 0) {
    bt_log_error("cannot start the HTTP server", "{s:s}", "error", err);
    return 1;
  }
  if (start_kafka(b) != 0 || (b->cfg.pg_dsn && start_pg(b) != 0))
    return 1;
  b->auth = bt_auth_start(&b->app, b->http, b->cfg.api_tokens, b->cfg.api_tokens_file);
  if (!b->auth || broker_publish_start(b) != 0)
    return 1;
  if (b->pg && broker_store_start(b) != 0)
    return 1;
  if (b->pg && b->cfg.relay && broker_relay_start(b) != 0)
    return 1;
  bt_log_info("listening", "{s:s, s:i, s:b, s:b}", "host", b->cfg.common.http_host, "port",
              bt_http_server_port(b->http), "event_store", b->store != NULL, "relay",
              b->relay != NULL);
  int rc = bt_app_run(&b->app);
  bt_log_info("exiting", "{s:i}", "code", rc);
  return rc;
}
