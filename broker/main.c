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
  bt_kafka_producer_config_t kc = {
      .brokers = b->cfg.kafka_brokers,
      .delivery_timeout_ms = (uint32_t)b->cfg.kafka_delivery_timeout_ms,
      /* The producer's own queue is sized above our admission limit, so a request we admit
       * is never refused half-way for a full local queue. */
      .queue_max_messages = (uint32_t)(b->cfg.max_inflight_msgs + b->cfg.relay_batch * 2 + 1024),
      .queue_max_kbytes = (uint32_t)(b->cfg.max_inflight_bytes / 1024 * 2 + 16384),
      .linger_ms = (uint32_t)b->cfg.kafka_linger_ms,
  };
  char err[256];
  if (bt_kafka_producer_new(&b->producer, &b->app, &kc, err) != 0) {
    bt_log_error("cannot create the Kafka producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_producer_register_metrics(b->producer);
  return 0;
}

static int start_pg(broker_t *b) {
  char err[512];
  if (b->cfg.migrate && broker_store_migrate(b->cfg.pg_dsn, err, sizeof err) != 0) {
    bt_log_error("schema migration failed", "{s:s}", "error", err);
    return BT_EIO;
  }
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
  if (broker_auth_start(b) != 0 || broker_publish_start(b) != 0)
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
