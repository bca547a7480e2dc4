/* saga_t: the baton-saga process: its configuration, the loaded definitions and the runtime
 * components (app, HTTP server, Postgres pool) its modules share. */
#ifndef SAGA_H
#define SAGA_H

#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "auth.h"
#include "config.h"
#include "http_server.h"
#include "kafka_consumer.h"
#include "kafka_producer.h"
#include "metrics.h"
#include "outbox_relay.h"
#include "pg_pool.h"
#include "saga_apply.h"
#include "saga_def.h"
#include "timers.h"

typedef struct saga_config {
  bt_common_config_t common;
  char *definitions;
  char *pg_dsn;
  int64_t pg_pool_size;
  int64_t pg_queue_max;
  bool migrate;
  int64_t max_key_len;
  int64_t list_default, list_max;
  char *api_tokens, *api_tokens_file;
  /* Kafka: commands out through the relay, replies in through the consumer. Without brokers
   * the process serves the API only and commands wait in saga.outbox. */
  char *kafka_brokers;
  char *kafka_properties;
  int64_t kafka_delivery_timeout_ms;
  char *reply_topics;       /* comma-separated; every loaded plan's reply_topic is added */
  char *group_id;
  int64_t reply_batch, reply_max_inflight, reply_max_tries;
  int64_t relay_batch, relay_poll_ms, relay_lease_ms;
  char *relay_dead_letter_topic;
  int64_t relay_max_inflight_msgs, relay_max_inflight_bytes;
  int64_t timer_poll_ms, timer_batch, timer_lease_ms, timer_max_held;
  int64_t max_waiters, max_wait_ms;
  int64_t stats_interval_ms;
} saga_config_t;

typedef struct saga_stats {
  bt_counter_t started;       /* baton_saga_started_total */
  bt_counter_t idempotent;    /* starts answered from an existing Idempotency-Key */
  bt_counter_t key_reused;    /* 422 idempotency_key_reused */
  bt_counter_t rejected;      /* starts refused for load (pool queue full) or Postgres errors */
  bt_counter_t replies;       /* replies consumed from Kafka and applied or ignored */
  bt_counter_t replies_malformed; /* reply records that could not be parsed (skipped) */
  bt_counter_t reply_retries; /* reply applications retried after a Postgres error */
  bt_counter_t timeouts;      /* attempts past their timeout */
  bt_counter_t retries;       /* backoffs done: a new attempt sent */
  bt_counter_t deadlines;     /* sagas past their deadline */
} saga_stats_t;

typedef struct saga_replies saga_replies_t;
typedef struct saga_timers saga_timers_t;
typedef struct saga_waits saga_waits_t;
typedef struct saga_metrics saga_metrics_t;

typedef struct saga {
  saga_config_t cfg;
  bt_app_t app;
  bt_http_server_t *http;
  bt_pg_pool_t *pg;
  bt_pg_stats_t pg_stats;
  saga_defs_t defs;
  saga_stats_t stats;
  bt_auth_t *auth;
  bt_timers_t wheel;                 /* near deadlines: reply retries, saga timers, ?wait */
  bt_kafka_producer_t *producer;     /* NULL without Kafka */
  bt_outbox_relay_t relay;           /* saga.outbox -> Kafka (saga_relay.c) */
  bt_outbox_relay_budget_t relay_budget;
  bool relay_on;
  saga_replies_t *replies;           /* the reply consumer (saga_replies.c) */
  saga_timers_t *timers;             /* the timer claimer (saga_timers.c) */
  saga_waits_t *waits;               /* ?wait= requests (saga_wait.c) */
  saga_metrics_t *metrics;           /* saga_metrics.c */
} saga_t;

/* The configuration table (saga_config.c); the returned array is static. */
const bt_config_var_t *saga_config_vars(saga_t *s, size_t *n);
/* Wall-clock Unix time in ms: the machine's `now` and the timers' due times, which must
 * agree across replicas (saga_config.c). */
uint64_t saga_unix_ms(void);
/* Whether s is a UUID in its 8-4-4-4-12 hex form (saga ids). */
bool saga_uuid_valid(const char *s);
/* Registers the HTTP API routes (saga_api.c) and its metrics. */
void saga_api_start(saga_t *s);
/* Starts the Kafka producer and the relay of saga.outbox (saga_relay.c). */
int saga_relay_start(saga_t *s) BT_MUSTCHECK;
/* A transition with a command committed: the relay, if it leads, looks at once. */
void saga_relay_nudge(saga_t *s);
/* Starts the reply consumer (saga_replies.c). */
int saga_replies_start(saga_t *s) BT_MUSTCHECK;
/* Answers req with saga `id` as GET /v1/sagas/{id} shows it, with `status` (a 202 gets a
 * Location), or 404 / 503. */
void saga_api_respond_saga(saga_t *s, bt_http_req_t *req, const char *id, int status);
/* ?wait= (saga_wait.c). start: the LISTEN connection. param: parses the request's wait
 * (0 when absent); -1 when invalid, answered 400. full: BATON_SAGA_MAX_WAITERS reached (the
 * caller answers 503). wait: holds req until saga `id` ends (answered 200) or ms pass
 * (answered timeout_status), freed if the client goes away. */
int saga_wait_start(saga_t *s) BT_MUSTCHECK;
int saga_wait_param(saga_t *s, bt_http_req_t *req, uint64_t *ms);
bool saga_wait_full(saga_t *s);
void saga_wait(saga_t *s, bt_http_req_t *req, const char *id, uint64_t ms, int timeout_status);
/* The engine's metrics (saga_metrics.c); on_apply counts and logs one saga_apply outcome. */
int saga_metrics_start(saga_t *s) BT_MUSTCHECK;
void saga_metrics_on_apply(saga_t *s, const saga_apply_result_t *r, const saga_event_t *ev);
/* Starts claiming and firing the timers of saga.timers (saga_timers.c). */
int saga_timers_start(saga_t *s) BT_MUSTCHECK;

#endif
