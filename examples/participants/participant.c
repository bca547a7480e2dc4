/* The participant process: the configuration table every role shares, start-up (migration of
 * the role's ledger schema, the Postgres pool, the Kafka producer and consumer, /healthz,
 * /readyz, /metrics) and the run until a signal drains it. */
#include "participant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const bt_config_var_t *config_vars(participant_t *p, size_t *n) {
  participant_config_t *c = &p->cfg;
  static bt_config_var_t vars[48];
  static char topic_def[PARTICIPANT_MAX_NAME + 1], group_def[PARTICIPANT_MAX_NAME + 1];
  snprintf(topic_def, sizeof topic_def, "%s", p->role->topic);
  snprintf(group_def, sizeof group_def, "baton-%s", p->role->name);
  const bt_config_var_t table[] = {
      BT_COMMON_CONFIG_VARS(c->common, p->role->port),
      {"BATON_PG_DSN", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED | BT_CFG_SECRET_URL, NULL,
       "Postgres holding the ledger (a schema named after the role: inventory, payment, "
       "shipping).",
       &c->pg_dsn},
      {"BATON_PG_POOL_SIZE", BT_CFG_INT, "4", 1, 256, 0, NULL, "Postgres connections.",
       &c->pg_pool_size},
      {"BATON_PARTICIPANT_PG_QUEUE", BT_CFG_INT, "1024", 1, 1000000, 0, NULL,
       "Ledger transactions waiting for a Postgres connection; beyond this a command waits "
       "and retries with backoff.",
       &c->pg_queue_max},
      {"BATON_PARTICIPANT_MIGRATE", BT_CFG_BOOL, "true", 0, 0, 0, NULL,
       "Create or upgrade the ledger schema at start (under an advisory lock).", &c->migrate},
      {"BATON_KAFKA_BROKERS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
       "Kafka bootstrap servers, host:port[,host:port...].", &c->brokers},
      {"BATON_KAFKA_PROPERTIES", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "librdkafka settings for the consumer and the producer, name=value[,name=value...].",
       &c->kafka_properties},
      {"BATON_PARTICIPANT_TOPIC", BT_CFG_STRING, topic_def, 0, 0, 0, NULL,
       "The command topic consumed (default: the role's, e.g. inventory.commands).", &c->topic},
      {"BATON_PARTICIPANT_GROUP", BT_CFG_STRING, group_def, 0, 0, 0, NULL,
       "Kafka consumer group (default baton-<role>); replicas of one role share it.",
       &c->group},
      {"BATON_PARTICIPANT_MAX_IN_FLIGHT", BT_CFG_INT, "256", 1, 100000, 0, NULL,
       "Commands being worked on at once; past it fetching pauses (memory stays bounded).",
       &c->max_in_flight},
      {"BATON_PARTICIPANT_FAIL_RATE", BT_CFG_STRING, "0", 0, 0, 0, NULL,
       "Share (0 to 1) of commands refused as a business failure (compensations never are). "
       "Deterministic alternative: a saga input with \"fail_at\":\"<step>\".",
       &c->fail_rate},
      {"BATON_PARTICIPANT_NEVER_ANSWER_RATE", BT_CFG_STRING, "0", 0, 0, 0, NULL,
       "Share (0 to 1) of commands and compensations applied but never answered (the "
       "orchestrator sees a timeout). Deterministic: input \"never_answer_at\":\"<step>\".",
       &c->never_answer_rate},
      {"BATON_PARTICIPANT_DUPLICATE_RATE", BT_CFG_STRING, "0", 0, 0, 0, NULL,
       "Share (0 to 1) of replies sent twice.", &c->duplicate_rate},
      {"BATON_PARTICIPANT_DELAY_MS", BT_CFG_DURATION, "0ms", 0, 3600000, 0, NULL,
       "Wait before applying each command (a slow participant).", &c->delay_ms},
      {"BATON_PARTICIPANT_RETRY_MIN", BT_CFG_DURATION, "50ms", 1, 60000, 0, NULL,
       "First backoff after a Postgres or Kafka error; doubles per failure.",
       &c->retry_min_ms},
      {"BATON_PARTICIPANT_RETRY_MAX", BT_CFG_DURATION, "2s", 1, 600000, 0, NULL,
       "Longest backoff after repeated errors.", &c->retry_max_ms},
  };
  BT_ASSERT(BT_ARRAY_LEN(table) <= BT_ARRAY_LEN(vars));
  for (size_t i = 0; i < BT_ARRAY_LEN(table); i++)
    vars[i] = table[i];
  *n = BT_ARRAY_LEN(table);
  return vars;
}

/* The config table has no fractional type; rates are parsed here, with the same kind of
 * message (the variable, the value, what it accepts). */
static int parse_rate(const char *name, const char *text, double *out) {
  char *end;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || !(v >= 0.0 && v <= 1.0)) {
    fprintf(stderr, "%s=%s: expected a number from 0 to 1\n", name, text);
    return BT_EINVAL;
  }
  *out = v;
  return 0;
}

static int start_kafka(participant_t *p) {
  char err[256];
  bt_kafka_producer_config_t pc = {
      .name = "kafka_producer",
      .brokers = p->cfg.brokers,
      .properties = p->cfg.kafka_properties,
  };
  if (bt_kafka_producer_new(&p->producer, &p->app, &pc, err) != 0) {
    bt_log_error("cannot create the Kafka producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_producer_register_metrics(p->producer);
  const char *topics[] = {p->cfg.topic};
  bt_kafka_consumer_config_t cc = {
      .name = "kafka_consumer",
      .brokers = p->cfg.brokers,
      .properties = p->cfg.kafka_properties,
      .group_id = p->cfg.group,
      .topics = topics,
      .ntopics = 1,
      .max_in_flight = (uint32_t)p->cfg.max_in_flight,
  };
  if (bt_kafka_consumer_new(&p->consumer, &p->app, &cc, participant_on_message, p, err) != 0) {
    bt_log_error("cannot create the Kafka consumer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_consumer_register_metrics(p->consumer);
  return 0;
}

static int start_pg(participant_t *p) {
  char err[512];
  participant_ledger_init(p);
  if (p->cfg.migrate && participant_ledger_migrate(p, err, sizeof err) != 0) {
    bt_log_error("ledger migration failed", "{s:s}", "error", err);
    return BT_EIO;
  }
  bt_pg_stats_register(&p->pg_stats, p->role->name);
  bt_pg_pool_config_t pc = {
      .dsn = p->cfg.pg_dsn,
      .name = p->role->name,
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

static void register_metrics(participant_t *p) {
  participant_stats_t *s = &p->stats;
  bt_metrics_counter(&s->commands, "baton_participant_commands_total",
                     "Command records consumed.");
  bt_metrics_counter(&s->applied, "baton_participant_effects_applied_total",
                     "Effects applied (commands and compensations), each once per saga step.");
  bt_metrics_counter(&s->duplicates, "baton_participant_duplicate_commands_total",
                     "Command ids seen before: not applied again, answered again.");
  bt_metrics_counter(&s->refused, "baton_participant_refused_total",
                     "Commands answered failure (business refusals).");
  bt_metrics_counter(&s->silent, "baton_participant_unanswered_total",
                     "Replies withheld on purpose (never-answer rate or rule).");
  bt_metrics_counter(&s->replies, "baton_participant_replies_total",
                     "Replies delivered to Kafka, duplicates included.");
  bt_metrics_counter(&s->malformed, "baton_participant_malformed_total",
                     "Records that are not a valid command: logged and skipped.");
  bt_metrics_counter(&s->retries, "baton_participant_retries_total",
                     "Postgres or Kafka errors retried with backoff.");
  bt_metrics_gauge(&s->in_flight, "baton_participant_in_flight",
                   "Commands being worked on.");
}

static void close_timers(bt_app_t *app, void *arg) {
  (void)app;
  participant_t *p = arg;
  bt_timers_close(&p->timers, NULL);
}

int participant_main(const participant_role_t *role, int argc, char **argv) {
  static participant_t participant;
  participant_t *p = &participant;
  p->role = role;
  char svc[64];
  snprintf(svc, sizeof svc, "baton-%s", role->name);
  if (argc > 1 && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0) {
    fprintf(stderr, "usage: %s [--help]\n", svc);
    return 2;
  }
  size_t nvars;
  const bt_config_var_t *vars = config_vars(p, &nvars);
  bt_config_startup(svc, argc, argv, vars, nvars, &p->cfg.common);
  if (parse_rate("BATON_PARTICIPANT_FAIL_RATE", p->cfg.fail_rate, &p->fail_rate) != 0 ||
      parse_rate("BATON_PARTICIPANT_NEVER_ANSWER_RATE", p->cfg.never_answer_rate,
                 &p->never_answer_rate) != 0 ||
      parse_rate("BATON_PARTICIPANT_DUPLICATE_RATE", p->cfg.duplicate_rate,
                 &p->duplicate_rate) != 0)
    return 2;

  bt_metrics_register_process();
  register_metrics(p);
  bt_app_init(&p->app, svc, (uint64_t)p->cfg.common.shutdown_timeout_ms);
  if (bt_timers_init(&p->timers, p->app.loop) != 0) {
    bt_log_error("cannot start the timer wheel", NULL);
    return 1;
  }
  bt_app_on_shutdown(&p->app, NULL, close_timers, p);
  bt_http_limits_t limits;
  bt_common_config_limits(&p->cfg.common, &limits);
  char err[256];
  if (bt_http_server_start(&p->http, &p->app, p->cfg.common.http_host,
                           (int)p->cfg.common.http_port, &limits, err) != 0) {
    bt_log_error("cannot start the HTTP server", "{s:s}", "error", err);
    return 1;
  }
  if (start_pg(p) != 0 || start_kafka(p) != 0)
    return 1;
  /* Registered last: the jobs' close runs first (close hooks run in reverse), while the pool,
   * the producer and the consumer they point into still exist. */
  bt_app_on_shutdown(&p->app, participant_jobs_drain, participant_jobs_close, p);
  bt_log_info("listening", "{s:s, s:i, s:s, s:s}", "host", p->cfg.common.http_host, "port",
              bt_http_server_port(p->http), "topic", p->cfg.topic, "group", p->cfg.group);
  int rc = bt_app_run(&p->app);
  bt_log_info("exiting", "{s:i}", "code", rc);
  return rc;
}
