/* The broker's configuration table: every BATON_* variable it reads, with defaults, bounds
 * and help. The same table drives --help, validation and the start-up log line. */
#include "broker.h"

const bt_config_var_t *broker_config_vars(broker_t *b, size_t *n) {
  broker_config_t *c = &b->cfg;
  static bt_config_var_t vars[64];
  const bt_config_var_t table[] = {
      BT_COMMON_CONFIG_VARS(c->common, "8080"),
      {"BATON_KAFKA_BROKERS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
       "Kafka bootstrap servers, host:port[,host:port...].", &c->kafka_brokers},
      {"BATON_KAFKA_DELIVERY_TIMEOUT", BT_CFG_DURATION, "30s", 1000, 3600000, 0, NULL,
       "A record not acknowledged by Kafka (acks=all) within this fails; publish answers 503.",
       &c->kafka_delivery_timeout_ms},
      {"BATON_KAFKA_LINGER", BT_CFG_DURATION, "0ms", 0, 1000, 0, NULL,
       "How long the producer waits to fill a batch. 0 sends at once; records that arrive "
       "while earlier ones are in flight still travel together.",
       &c->kafka_linger_ms},
      {"BATON_BROKER_TOPICS", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "Topics publish may write: comma-separated names, or prefixes ending in '*'. Unset: any "
       "valid topic name. Others answer 403.",
       &c->topics},
      {"BATON_BROKER_MAX_BATCH", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Most events in one publish or append request; more answer 413.", &c->max_batch},
      {"BATON_BROKER_MAX_INFLIGHT_MESSAGES", BT_CFG_INT, "50000", 1, 10000000, 0, NULL,
       "Published records awaiting Kafka's acknowledgement; beyond this publish answers 429.",
       &c->max_inflight_msgs},
      {"BATON_BROKER_MAX_INFLIGHT_BYTES", BT_CFG_SIZE, "32MiB", 1024, (int64_t)4 << 30, 0, NULL,
       "Bytes (key + value) of records awaiting acknowledgement; beyond this publish answers 429.",
       &c->max_inflight_bytes},
      {"BATON_BROKER_RETRY_AFTER", BT_CFG_INT, "1", 0, 3600, 0, NULL,
       "Seconds sent in Retry-After with 429 and 503 answers.", &c->retry_after_s},
      {"BATON_API_TOKENS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "Comma-separated bearer tokens; when set (or a tokens file is), every /v1 route needs "
       "Authorization: Bearer <token>.",
       &c->api_tokens},
      {"BATON_API_TOKENS_FILE", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "File with one bearer token per line (a mounted Secret); read at start.",
       &c->api_tokens_file},
      {"BATON_PG_DSN", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET_URL, NULL,
       "Postgres for the event store, e.g. postgresql://user:pw@host:5432/db. Unset: no event "
       "store and no relay.",
       &c->pg_dsn},
      {"BATON_PG_POOL_SIZE", BT_CFG_INT, "4", 1, 256, 0, NULL, "Postgres connections.",
       &c->pg_pool_size},
      {"BATON_BROKER_MIGRATE", BT_CFG_BOOL, "true", 0, 0, 0, NULL,
       "Apply schema migrations at start (under an advisory lock, safe with N replicas).",
       &c->migrate},
      {"BATON_BROKER_APPEND_BATCH", BT_CFG_INT, "512", 1, 10000, 0, NULL,
       "Most appends committed together in one group-commit transaction.", &c->append_batch_max},
      {"BATON_BROKER_APPEND_QUEUE", BT_CFG_INT, "8192", 1, 1000000, 0, NULL,
       "Appends waiting for a group commit; beyond this appends answer 429.",
       &c->append_queue_max},
      {"BATON_BROKER_READ_LIMIT", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Most events one GET of a stream returns.", &c->read_limit_max},
      {"BATON_BROKER_RELAY", BT_CFG_BOOL, "true", 0, 0, 0, NULL,
       "Relay committed events (and service outboxes) to Kafka.", &c->relay},
      {"BATON_BROKER_ROUTES", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "Category-to-topic routes for the relay, e.g. order=orders.events,*=events. Unset: "
       "category C goes to topic C.events.",
       &c->routes},
      {"BATON_BROKER_OUTBOX_DSNS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET_URL, NULL,
       "Comma-separated Postgres DSNs of services whose outbox table is relayed.",
       &c->outbox_dsns},
      {"BATON_BROKER_RELAY_BATCH", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Most events relayed per round.", &c->relay_batch},
      {"BATON_BROKER_RELAY_POLL", BT_CFG_DURATION, "50ms", 1, 60000, 0, NULL,
       "How often an idle relay looks for new events written by other replicas.",
       &c->relay_poll_ms},
      {"BATON_BROKER_RELAY_LEASE", BT_CFG_DURATION, "5s", 100, 600000, 0, NULL,
       "Relay leadership lease; if the leader dies another replica takes over after this.",
       &c->relay_lease_ms},
  };
  BT_ASSERT(BT_ARRAY_LEN(table) <= BT_ARRAY_LEN(vars));
  for (size_t i = 0; i < BT_ARRAY_LEN(table); i++)
    vars[i] = table[i];
  *n = BT_ARRAY_LEN(table);
  return vars;
}
