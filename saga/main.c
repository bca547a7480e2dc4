/* baton-saga: entry point. `baton-saga check DIR` validates saga definitions and exits;
 * `baton-saga migrate` applies the schema and exits; otherwise it loads the definitions
 * (any error stops start-up with every message), migrates, and serves the HTTP API,
 * /healthz, /readyz and /metrics until a signal drains it.
 *
 * Every transition goes through saga_apply() (read, decide, write with a seq guard): replies
 * over HTTP and from Kafka (saga_replies.c), operator actions and timers. Commands leave
 * saga.outbox through the outbox relay (saga_relay.c). Without BATON_KAFKA_BROKERS only the
 * HTTP API runs and commands wait in saga.outbox. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "saga.h"
#include "saga_schema.h"

static saga_t saga;

static int cmd_check(const char *dir) {
  saga_defs_t defs;
  char *errs = NULL;
  if (saga_defs_load(&defs, dir, &errs) != 0) {
    fputs(errs, stderr);
    free(errs);
    return 1;
  }
  for (size_t i = 0; i < defs.n; i++)
    printf("ok %s version %u (%zu steps) from %s\n", defs.plans[i]->name, defs.plans[i]->version,
           defs.plans[i]->nsteps, defs.plans[i]->file);
  saga_defs_free(&defs);
  return 0;
}

static int cmd_migrate(saga_t *s) {
  char err[512];
  if (saga_schema_migrate(s->cfg.pg_dsn, err, sizeof err) != 0) {
    bt_log_error("schema migration failed", "{s:s}", "error", err);
    return 1;
  }
  bt_log_info("schema is up to date", "{s:i}", "version", saga_schema_version());
  return 0;
}

static int load_definitions(saga_t *s) {
  char *errs = NULL;
  if (saga_defs_load(&s->defs, s->cfg.definitions, &errs) != 0) {
    /* Every message on stderr as written (file:line:column: field: ...), and once in the log. */
    fputs(errs, stderr);
    bt_log_error("invalid saga definitions", "{s:s, s:s}", "directory", s->cfg.definitions,
                 "errors", errs);
    free(errs);
    return BT_EINVAL;
  }
  for (size_t i = 0; i < s->defs.n; i++)
    bt_log_info("loaded saga definition", "{s:s, s:i, s:i, s:s}", "saga", s->defs.plans[i]->name,
                "version", (int)s->defs.plans[i]->version, "steps",
                (int)s->defs.plans[i]->nsteps, "file", s->defs.plans[i]->file);
  return 0;
}

static int start_pg(saga_t *s) {
  if (s->cfg.migrate && cmd_migrate(s) != 0)
    return BT_EIO;
  bt_pg_stats_register(&s->pg_stats, "saga");
  bt_pg_pool_config_t pc = {
      .dsn = s->cfg.pg_dsn,
      .name = "saga",
      .size = (unsigned)s->cfg.pg_pool_size,
      .queue_max = (unsigned)s->cfg.pg_queue_max,
      .stats = &s->pg_stats,
  };
  if (bt_pg_pool_new(&s->pg, s->app.loop, &pc) != 0) {
    bt_log_error("cannot create the Postgres pool", NULL);
    return BT_EINVAL;
  }
  bt_pg_pool_attach(s->pg, &s->app, "postgres");
  return 0;
}

static void close_wheel(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_timers_close(arg, NULL);
}

/* After every transition: the relay looks at once (it may have written a command), and the
 * metrics and logs see it. */
static void on_apply(const saga_apply_result_t *r, const saga_event_t *ev, void *arg) {
  saga_t *s = arg;
  if (r->verdict == SAGA_APPLIED)
    saga_relay_nudge(s);
  saga_metrics_on_apply(s, r, ev);
}

static void usage(void) {
  fprintf(stderr, "usage: baton-saga [check DIR | migrate | --help]\n");
}

int main(int argc, char **argv) {
  saga_t *s = &saga;
  if (argc > 1 && strcmp(argv[1], "check") == 0) {
    if (argc != 3) {
      usage();
      return 2;
    }
    return cmd_check(argv[2]);
  }
  bool migrate_only = argc > 1 && strcmp(argv[1], "migrate") == 0;
  if (argc > 1 && !migrate_only && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0) {
    usage();
    return 2;
  }
  size_t nvars;
  const bt_config_var_t *vars = saga_config_vars(s, &nvars);
  bt_config_startup("baton-saga", argc, argv, vars, nvars, &s->cfg.common);
  if (migrate_only)
    return cmd_migrate(s);
  if (load_definitions(s) != 0)
    return 1;

  bt_metrics_register_process();
  bt_app_init(&s->app, "baton-saga", (uint64_t)s->cfg.common.shutdown_timeout_ms);
  if (bt_timers_init(&s->wheel, s->app.loop) != 0)
    return 1;
  bt_app_on_shutdown(&s->app, NULL, close_wheel, &s->wheel);
  bt_http_limits_t limits;
  bt_common_config_limits(&s->cfg.common, &limits);
  char err[256];
  if (bt_http_server_start(&s->http, &s->app, s->cfg.common.http_host, (int)s->cfg.common.http_port,
                           &limits, err) != 0) {
    bt_log_error("cannot start the HTTP server", "{s:s}", "error", err);
    return 1;
  }
  if (start_pg(s) != 0)
    return 1;
  s->auth = bt_auth_start(&s->app, s->http, s->cfg.api_tokens, s->cfg.api_tokens_file);
  if (!s->auth)
    return 1;
  saga_api_start(s);
  saga_apply_on_commit(on_apply, s);
  if (saga_timers_start(s) != 0 || saga_wait_start(s) != 0 || saga_metrics_start(s) != 0)
    return 1;
  if (s->cfg.kafka_brokers && *s->cfg.kafka_brokers) {
    if (saga_relay_start(s) != 0 || saga_replies_start(s) != 0)
      return 1;
  } else {
    bt_log_warn("BATON_KAFKA_BROKERS is not set: commands stay in saga.outbox and no reply is "
                "consumed",
                NULL);
  }
  bt_log_info("listening", "{s:s, s:i, s:i}", "host", s->cfg.common.http_host, "port",
              bt_http_server_port(s->http), "definitions", (int)s->defs.n);
  int rc = bt_app_run(&s->app);
  bt_log_info("exiting", "{s:i}", "code", rc);
  saga_defs_free(&s->defs);
  return rc;
}
