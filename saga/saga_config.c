/* The saga orchestrator's configuration table: every BATON_* variable it reads, with defaults,
 * bounds and help. The same table drives --help, validation and the start-up log line. */
#include "saga.h"

#include <time.h>

uint64_t saga_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const bt_config_var_t *saga_config_vars(saga_t *s, size_t *n) {
  saga_config_t *c = &s->cfg;
  static bt_config_var_t vars[64];
  const bt_config_var_t table[] = {
      BT_COMMON_CONFIG_VARS(c->common, "8081"),
      {"BATON_SAGA_DEFINITIONS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
       "Directory of saga definitions (*.yaml, *.yml), e.g. a mounted ConfigMap. Every file is "
       "validated at start; any error stops the process. `baton-saga check DIR` validates only.",
       &c->definitions},
      {"BATON_PG_DSN", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED | BT_CFG_SECRET_URL, NULL,
       "Postgres holding the sagas (schema `saga`), e.g. postgresql://user:pw@host:5432/db.",
       &c->pg_dsn},
      {"BATON_PG_POOL_SIZE", BT_CFG_INT, "4", 1, 256, 0, NULL, "Postgres connections.",
       &c->pg_pool_size},
      {"BATON_SAGA_PG_QUEUE", BT_CFG_INT, "1024", 1, 1000000, 0, NULL,
       "Requests waiting for a Postgres connection; beyond this starts answer 503.",
       &c->pg_queue_max},
      {"BATON_SAGA_MIGRATE", BT_CFG_BOOL, "true", 0, 0, 0, NULL,
       "Apply schema migrations at start (under an advisory lock, safe with N replicas).",
       &c->migrate},
      {"BATON_SAGA_MAX_IDEMPOTENCY_KEY", BT_CFG_INT, "255", 1, 4096, 0, NULL,
       "Longest Idempotency-Key header accepted; longer ones answer 400.", &c->max_key_len},
      {"BATON_SAGA_LIST_LIMIT", BT_CFG_INT, "100", 1, 100000, 0, NULL,
       "Sagas one GET /v1/sagas returns when the request sets no limit.", &c->list_default},
      {"BATON_SAGA_LIST_MAX", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Largest limit GET /v1/sagas accepts; more answers 400.", &c->list_max},
      {"BATON_API_TOKENS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "Comma-separated bearer tokens; when set (or BATON_API_TOKENS_FILE), every /v1 route "
       "needs Authorization: Bearer <token>.",
       &c->api_tokens},
      {"BATON_API_TOKENS_FILE", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "File with one bearer token per line (a mounted Secret).", &c->api_tokens_file},
      {"BATON_KAFKA_BROKERS", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "Kafka bootstrap list. Unset: no command leaves saga.outbox and no reply is consumed "
       "(the HTTP API alone).",
       &c->kafka_brokers},
      {"BATON_KAFKA_PROPERTIES", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "librdkafka properties passed through (name=value;...), producer and consumer.",
       &c->kafka_properties},
      {"BATON_KAFKA_DELIVERY_TIMEOUT", BT_CFG_DURATION, "30s", 1000, 3600000, 0, NULL,
       "A command not acknowledged by Kafka within this is retried by the relay.",
       &c->kafka_delivery_timeout_ms},
      {"BATON_SAGA_REPLY_TOPIC", BT_CFG_STRING, "saga.replies", 0, 0, 0, NULL,
       "Reply topic(s), comma-separated, consumed besides every loaded definition's "
       "reply_topic.",
       &c->reply_topics},
      {"BATON_SAGA_CONSUMER_GROUP", BT_CFG_STRING, "baton-saga", 0, 0, 0, NULL,
       "Consumer group of the reply consumer; replicas share the reply partitions through it.",
       &c->group_id},
      {"BATON_SAGA_REPLY_BATCH", BT_CFG_INT, "100", 1, 10000, 0, NULL,
       "Most replies handed to the engine together (applied concurrently, offsets committed "
       "once all are in Postgres).",
       &c->reply_batch},
      {"BATON_SAGA_REPLY_MAX_INFLIGHT", BT_CFG_INT, "2000", 1, 1000000, 0, NULL,
       "Replies fetched and not yet applied; beyond this fetching pauses.",
       &c->reply_max_inflight},
      {"BATON_SAGA_REPLY_MAX_TRIES", BT_CFG_INT, "30", 1, 1000000, 0, NULL,
       "Attempts to apply a reply that Postgres keeps refusing (backoff 100 ms to 5 s) before "
       "it is dropped and logged; the step's timeout then sends the command again.",
       &c->reply_max_tries},
      {"BATON_SAGA_RELAY_BATCH", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Commands per relay round.", &c->relay_batch},
      {"BATON_SAGA_RELAY_POLL", BT_CFG_DURATION, "50ms", 1, 60000, 0, NULL,
       "Relay poll interval when idle (commits of this process nudge it at once).",
       &c->relay_poll_ms},
      {"BATON_SAGA_RELAY_LEASE", BT_CFG_DURATION, "5s", 100, 600000, 0, NULL,
       "Relay leadership lease: one replica relays; a dead leader is replaced after this.",
       &c->relay_lease_ms},
      {"BATON_SAGA_RELAY_DEAD_LETTER_TOPIC", BT_CFG_STRING, "baton.deadletter", 0, 0, 0, NULL,
       "Where a command Kafka refuses for good goes (empty: it holds the relay).",
       &c->relay_dead_letter_topic},
      {"BATON_SAGA_RELAY_MAX_INFLIGHT_MESSAGES", BT_CFG_INT, "20000", 1, 10000000, 0, NULL,
       "Commands in the producer at once.", &c->relay_max_inflight_msgs},
      {"BATON_SAGA_RELAY_MAX_INFLIGHT_BYTES", BT_CFG_SIZE, "32MiB", 1024, (int64_t)4 << 30, 0,
       NULL, "Bytes of commands in the producer at once.", &c->relay_max_inflight_bytes},
      {"BATON_SAGA_TIMER_POLL", BT_CFG_DURATION, "100ms", 10, 60000, 0, NULL,
       "How often saga.timers is read for timers due within twice this; the timer wheel fires "
       "them on time.",
       &c->timer_poll_ms},
      {"BATON_SAGA_TIMER_BATCH", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Most timers claimed by one read.", &c->timer_batch},
      {"BATON_SAGA_TIMER_LEASE", BT_CFG_DURATION, "10s", 1000, 3600000, 0, NULL,
       "A claimed timer is this replica's for this long; if the replica dies it fires "
       "elsewhere after it.",
       &c->timer_lease_ms},
      {"BATON_SAGA_TIMER_MAX_HELD", BT_CFG_INT, "20000", 1, 10000000, 0, NULL,
       "Claimed timers held in memory; claiming pauses at this.", &c->timer_max_held},
      {"BATON_SAGA_MAX_WAITERS", BT_CFG_INT, "10000", 1, 10000000, 0, NULL,
       "Requests held by ?wait= at once; more answer 503.", &c->max_waiters},
      {"BATON_SAGA_MAX_WAIT", BT_CFG_DURATION, "60s", 1, 3600000, 0, NULL,
       "Longest ?wait= accepted; longer answers 400.", &c->max_wait_ms},
      {"BATON_SAGA_STATS_INTERVAL", BT_CFG_DURATION, "5s", 100, 3600000, 0, NULL,
       "How often baton_saga_sagas{type,state} and baton_saga_oldest_live_seconds are read "
       "from Postgres.",
       &c->stats_interval_ms},
  };
  BT_ASSERT(BT_ARRAY_LEN(table) <= BT_ARRAY_LEN(vars));
  for (size_t i = 0; i < BT_ARRAY_LEN(table); i++)
    vars[i] = table[i];
  *n = BT_ARRAY_LEN(table);
  return vars;
}
