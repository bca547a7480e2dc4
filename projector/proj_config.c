/* The projector's configuration table: every BATON_* variable it reads, with defaults, bounds
 * and help. The same table drives --help, validation and the start-up log line. */
#include "auth.h"
#include "projector.h"

const bt_config_var_t *projector_config_vars(projector_t *p, size_t *n) {
  projector_config_t *c = &p->cfg;
  static bt_config_var_t vars[48]; /* room for the read API's and auth's rows */
  const bt_config_var_t table[] = {
      BT_COMMON_CONFIG_VARS(c->common, "8082"),
      {"BATON_PROJECTIONS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
       "Directory of projection definitions (*.yaml, *.yml). Every file is validated at start; "
       "any error stops the process. `baton-projector check DIR` validates only.",
       &c->projections},
      {"BATON_PG_DSN", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED | BT_CFG_SECRET_URL, NULL,
       "Postgres holding the queryable copy (schema `projector`) and its offsets.", &c->pg_dsn},
      {"BATON_REDIS_URL", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED | BT_CFG_SECRET_URL, NULL,
       "Redis holding the read models, redis://[[user]:password@]host:port[/db].",
       &c->redis_url},
      {"BATON_KAFKA_BROKERS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
       "Kafka bootstrap servers, host:port[,host:port...].", &c->kafka_brokers},
      {"BATON_KAFKA_PROPERTIES", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,
       "librdkafka settings for every Kafka client, name=value[,name=value...].",
       &c->kafka_properties},
      {"BATON_KAFKA_DELIVERY_TIMEOUT", BT_CFG_DURATION, "30s", 1000, 3600000, 0, NULL,
       "A dead letter not acknowledged by Kafka within this is retried (the projector holds "
       "at it meanwhile).",
       &c->kafka_delivery_timeout_ms},
      {"BATON_PROJECTOR_DLQ_TOPIC", BT_CFG_STRING, "projector.dlq", 0, 0, 0, NULL,
       "Dead-letter topic for poison events (undecodable, unmapped or failing their mapping), "
       "with headers baton_dl_class, baton_dl_error, baton_dl_topic, baton_dl_partition, "
       "baton_dl_offset.",
       &c->dlq_topic},
      {"BATON_PROJECTOR_INSTANCE_ID", BT_CFG_STRING, NULL, 0, 0, 0, NULL,
       "Static group membership (Kafka's group.instance.id, suffixed with the projection): a "
       "replica restarted within the session timeout (a crash, a rolling update) gets its "
       "partitions back at once instead of waiting for a rebalance. Unique per replica, e.g. "
       "the pod name; unset: dynamic membership.",
       &c->instance_id},
      {"BATON_PROJECTOR_SESSION_TIMEOUT", BT_CFG_DURATION, "10s", 500, 300000, 0, NULL,
       "Kafka group session timeout: how long the group waits for a replica that stopped "
       "(kill -9, a lost node) before its partitions move. Keep heartbeat.interval.ms "
       "(BATON_KAFKA_PROPERTIES) at a third of it or less.",
       &c->session_timeout_ms},
      {"BATON_PROJECTOR_REBUILD_GRACE", BT_CFG_DURATION, "60s", 0, 86400000, 0, NULL,
       "After a rebuild switched readers to the new version, the old version's keys and tables "
       "stay this long (for readers that read `current` just before), then are dropped.",
       &c->rebuild_grace_ms},
      {"BATON_PG_POOL_SIZE", BT_CFG_INT, "4", 1, 256, 0, NULL, "Postgres connections.",
       &c->pg_pool_size},
      {"BATON_PROJECTOR_PG_QUEUE", BT_CFG_INT, "1024", 1, 1000000, 0, NULL,
       "Postgres requests waiting for a connection.", &c->pg_queue_max},
      {"BATON_PROJECTOR_MIGRATE", BT_CFG_BOOL, "true", 0, 0, 0, NULL,
       "Apply schema migrations at start (under an advisory lock, safe with N replicas).",
       &c->migrate},
      {"BATON_PROJECTOR_BATCH", BT_CFG_INT, "2000", 1, 100000, 0, NULL,
       "Most events applied by one sink write (one Lua script, one Postgres transaction).",
       &c->batch_max},
      {"BATON_PROJECTOR_MAX_IN_FLIGHT", BT_CFG_INT, "20000", 1, 10000000, 0, NULL,
       "Fetched events not yet applied, per projection; past it delivery waits, half as many "
       "more are held, librdkafka prefetches at most this many per partition, and fetching "
       "pauses only if nothing is applied for 1 s (or after 30 s).",
       &c->max_in_flight},
      {"BATON_PROJECTOR_REDIS_MAX_PENDING", BT_CFG_SIZE, "256MiB", 1 << 20, (int64_t)1 << 34, 0,
       NULL, "Bytes of Redis commands awaiting replies.", &c->redis_max_pending_bytes},
      {"BATON_PROJECTOR_RETRY_MIN", BT_CFG_DURATION, "100ms", 1, 600000, 0, NULL,
       "First delay before retrying a sink write that failed for a transient reason (a sink "
       "down); doubled per failure up to BATON_PROJECTOR_RETRY_MAX.",
       &c->retry_min_ms},
      {"BATON_PROJECTOR_RETRY_MAX", BT_CFG_DURATION, "5s", 1, 3600000, 0, NULL,
       "Longest delay between retries of a failed sink write.", &c->retry_max_ms},
      BT_AUTH_CONFIG_VARS(c->api_tokens, c->api_tokens_file),
      PROJ_READ_CONFIG_VARS(c->read),
  };
  BT_ASSERT(BT_ARRAY_LEN(table) <= BT_ARRAY_LEN(vars));
  for (size_t i = 0; i < BT_ARRAY_LEN(table); i++)
    vars[i] = table[i];
  *n = BT_ARRAY_LEN(table);
  return vars;
}
