/* The broker's configuration table: every BATON_* variable it reads, with defaults, bounds
 * and help. The same table drives --help, validation and the start-up log line. */
#include "auth.h"
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
      {"BATON_KAFKA_MESSAGE_MAX_BYTES", BT_CFG_SIZE, "1000000", 10000, 100000000, 0, NULL,
       "The producer's message.max.bytes. A published or appended event whose Kafka record "
       "(data, key and headers) would be larger answers 413, so the relay never meets a record "
       "Kafka refuses for its size. Keep it at or below the topics' max.message.bytes.",
       &c->kafka_message_max},
      {"BATON_KAFKA_PROPERTIES", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "librdkafka settings for every Kafka client, name=value[,name=value...] (a backslash "
       "escapes a comma), e.g. security.protocol=SASL_SSL,sasl.mechanism=PLAIN,"
       "sasl.username=u,sasl.password=p. Secrets are masked in logs; settings baton owns are "
       "refused.",
       &c->kafka_properties},
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
      BT_AUTH_CONFIG_VARS(c->api_tokens, c->api_tokens_file),
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
      {"BATON_BROKER_APPEND_GROUP_BYTES", BT_CFG_SIZE, "32MiB", 65536, (int64_t)1 << 31, 0, NULL,
       "Most bytes (data as hex) of appends committed together in one transaction; an append "
       "larger than this alone still goes, in a transaction of its own.",
       &c->append_group_bytes},
      {"BATON_BROKER_READ_LIMIT", BT_CFG_INT, "1000", 1, 100000, 0, NULL,
       "Most events one GET of a stream returns.", &c->read_limit_max},
      {"BATON_BROKER_READ_BYTES", BT_CFG_SIZE, "4MiB", 1024, (int64_t)1 << 30, 0, NULL,
       "Most bytes of event data one GET of a stream returns; a page holds at least one event "
       "and says where to go on in next.",
       &c->read_bytes_max},
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
      {"BATON_BROKER_RELAY_DEAD_LETTER_TOPIC", BT_CFG_STRING, "baton.deadletter", 0, 0, 0, NULL,
       "Where the relay moves a record Kafka refuses for good (or one with no valid, allowed "
       "topic), with the error and the record's coordinates in baton_dl_* headers. Empty: such "
       "a record holds its relay until it is fixed.",
       &c->relay_dead_letter_topic},
      {"BATON_BROKER_RELAY_DEAD_LETTER_AFTER", BT_CFG_INT, "3", 1, 1000, 0, NULL,
       "Refusals of one record with a non-retriable error (retriable errors in between neither "
       "count nor reset) before it moves to the dead-letter topic.",
       &c->relay_dead_letter_after},
      {"BATON_BROKER_RELAY_MAX_FAILED_ROUNDS", BT_CFG_INT, "5", 0, 1000000, 0, NULL,
       "Rounds in a row in which Kafka refuses records before the relay leader gives its lease "
       "up for another replica (a producer that is not ready gives it up at once). 0: never.",
       &c->relay_max_failed_rounds},
      {"BATON_BROKER_RELAY_MAX_INFLIGHT_MESSAGES", BT_CFG_INT, "20000", 1, 10000000, 0, NULL,
       "Records all relays together keep in the producer, apart from publish's budget.",
       &c->relay_max_inflight_msgs},
      {"BATON_BROKER_RELAY_MAX_INFLIGHT_BYTES", BT_CFG_SIZE, "32MiB", 1024, (int64_t)4 << 30, 0,
       NULL, "Bytes (key + value) all relays together keep in the producer, apart from publish's.",
       &c->relay_max_inflight_bytes},
  };
  BT_ASSERT(BT_ARRAY_LEN(table) <= BT_ARRAY_LEN(vars));
  for (size_t i = 0; i < BT_ARRAY_LEN(table); i++)
    vars[i] = table[i];
  *n = BT_ARRAY_LEN(table);
  return vars;
}

bt_kafka_producer_config_t broker_producer_config(const broker_t *b, uint64_t max_msgs,
                                                  uint64_t max_bytes) {
  /* The local queue holds the budget of what its users admit plus a margin, so that a
   * record admitted within the budget is never refused for a full queue. */
  return (bt_kafka_producer_config_t){
      .brokers = b->cfg.kafka_brokers,
      .properties = b->cfg.kafka_properties,
      .delivery_timeout_ms = (uint32_t)b->cfg.kafka_delivery_timeout_ms,
      .queue_max_messages = (uint32_t)(max_msgs + 1024),
      .queue_max_kbytes = (uint32_t)(max_bytes / 1024 * 2 + 16384),
      .linger_ms = (uint32_t)b->cfg.kafka_linger_ms,
      .message_max_bytes = (uint32_t)b->cfg.kafka_message_max,
  };
}
