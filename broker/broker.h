/* broker_t: the broker process's components and configuration, shared by its modules
 * (publish, auth, event store, relay). main.c creates it; each module starts from it. */
#ifndef BROKER_BROKER_H
#define BROKER_BROKER_H

#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "auth.h"
#include "config.h"
#include "http_server.h"
#include "kafka_producer.h"
#include "pg_pool.h"

typedef struct broker_config {
  bt_common_config_t common;
  /* Kafka */
  char *kafka_brokers;
  int64_t kafka_delivery_timeout_ms;
  int64_t kafka_linger_ms;
  int64_t kafka_message_max;    /* the producer's message.max.bytes; larger events get 413 */
  char *kafka_properties;
  /* publish */
  char *topics;                 /* allow-list: names, or prefixes ending in '*'; NULL = all */
  int64_t max_batch;            /* events per request */
  int64_t max_inflight_msgs;    /* published, not yet acknowledged */
  int64_t max_inflight_bytes;
  int64_t retry_after_s;
  /* auth */
  char *api_tokens;
  char *api_tokens_file;
  /* event store */
  char *pg_dsn;                 /* NULL: no event store and no relay */
  int64_t pg_pool_size;
  bool migrate;                 /* run schema migrations at start */
  int64_t append_batch_max;     /* appends per group-commit transaction */
  int64_t append_queue_max;     /* appends waiting for a group commit; more get 429 */
  int64_t read_limit_max;       /* events per GET page */
  int64_t read_bytes_max;       /* event bytes per GET page (at least one event) */
  int64_t append_group_bytes;   /* encoded bytes per group-commit transaction */
  /* relay */
  bool relay;                   /* relay the store (and service outboxes) to Kafka */
  char *routes;                 /* category=topic,...,*=topic */
  char *outbox_dsns;            /* service databases whose outbox table is relayed */
  int64_t relay_batch;          /* events per relay round */
  int64_t relay_poll_ms;        /* idle poll interval */
  int64_t relay_lease_ms;       /* leadership lease; a dead leader is replaced after this */
  char *relay_dead_letter_topic; /* NULL/empty: a record Kafka refuses holds the relay */
  int64_t relay_dead_letter_after; /* non-retriable refusals of one record before it moves */
  int64_t relay_max_failed_rounds; /* failed rounds before a leader gives its lease up */
  int64_t relay_max_inflight_msgs; /* the relays' producer budget, apart from publish's */
  int64_t relay_max_inflight_bytes;
} broker_config_t;

typedef struct broker_publish broker_publish_t;
typedef struct broker_store broker_store_t;
typedef struct broker_relay broker_relay_t;

typedef struct broker {
  broker_config_t cfg;
  bt_app_t app;
  bt_http_server_t *http;
  bt_kafka_producer_t *producer;       /* publish's */
  bt_kafka_producer_t *relay_producer; /* the relays': gap-less, renewed after a fatal error */
  bt_pg_pool_t *pg;          /* NULL without BATON_PG_DSN */
  bt_pg_stats_t pg_stats;
  bt_auth_t *auth;
  broker_publish_t *publish;
  broker_store_t *store;     /* NULL without BATON_PG_DSN */
  broker_relay_t *relay;     /* NULL when disabled */
  bool schema_ready;         /* the start-up migration is done (or turned off) */
} broker_t;

/* The configuration table (broker_config.c), bound to b->cfg. */
const bt_config_var_t *broker_config_vars(broker_t *b, size_t *n);
/* A Kafka producer's settings from the configuration, its local queue sized for a budget of
 * max_msgs records and max_bytes bytes (broker_config.c). */
bt_kafka_producer_config_t broker_producer_config(const broker_t *b, uint64_t max_msgs,
                                                  uint64_t max_bytes);

/* Module entry points, called by main.c in this order. Each registers its routes and hooks
 * and returns 0, or logs the reason and returns a BT_E* code (start-up then fails). */
int broker_publish_start(broker_t *b) BT_MUSTCHECK;
/* Runs the schema migrations synchronously under an advisory lock (blocking: on a worker
 * thread at start, see main.c, and by `baton-broker migrate`). */
int broker_store_migrate(const char *dsn, char *errstr, size_t errsz) BT_MUSTCHECK;
int broker_store_start(broker_t *b) BT_MUSTCHECK;
int broker_relay_start(broker_t *b) BT_MUSTCHECK;
/* Starts the relays created by broker_relay_start once the schema is migrated (main.c). */
void broker_relay_go(broker_t *b);
/* Answers 503 and returns false while the start-up migration runs. Store handlers call it. */
bool broker_schema_ready(broker_t *b, bt_http_req_t *req);

/* Called by the event store after an append commits, so the local relay (if leader) looks at
 * once instead of waiting for its poll interval. */
void broker_relay_nudge(broker_t *b);

/* Sets Retry-After from the configuration. */
void broker_retry_after(broker_t *b, bt_http_req_t *req);

#endif
