/* participant_t: the common part of the example saga participants (issue 8 §5). A participant
 * consumes its command topic, applies each command's effect and its command id (the dedupe
 * key) to a ledger table in Postgres in one transaction, then answers on the command's
 * ce_replyto topic as a binary-mode CloudEvent, and commits the Kafka offset only once both
 * are done. The roles (inventory.c, payment.c, shipping.c) only name their topic, schema and
 * command types and build the result of a successful command. */
#ifndef PARTICIPANT_H
#define PARTICIPANT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "config.h"
#include "http_server.h"
#include "kafka_consumer.h"
#include "kafka_producer.h"
#include "metrics.h"
#include "pg_pool.h"
#include "timers.h"

#define PARTICIPANT_MAX_ID 255   /* ce_id: <saga>/<step>/<attempt>/<kind> */
#define PARTICIPANT_MAX_NAME 127 /* step names, command types, topics */

/* One command as read from its Kafka record. Strings are NUL-terminated copies. */
typedef struct participant_cmd {
  char command_id[PARTICIPANT_MAX_ID + 1];
  char type[PARTICIPANT_MAX_NAME + 1];
  char saga_id[PARTICIPANT_MAX_NAME + 1];
  char step[PARTICIPANT_MAX_NAME + 1];
  char attempt[16];
  char kind[16]; /* "command" | "compensation" */
  char replyto[PARTICIPANT_MAX_NAME + 1];
  char traceparent[129];
  json_t *value; /* {"input":..,"results":{..}}; owned */
  /* The record's encoding (issue 8 §2): a protobuf baton.v1.SagaCommand is answered with a
   * baton.v1.SagaReply, a JSON value with a binary-mode CloudEvent. */
  bool protobuf;
  uint32_t step_index; /* protobuf only: the step's index, which SagaReply names */
} participant_cmd_t;

/* What a role contributes. Everything is static. */
typedef struct participant_role {
  const char *name;         /* "inventory": the service, the Postgres schema, the group id */
  const char *topic;        /* default command topic */
  const char *command;      /* ce_type of the step's command, e.g. "ReserveInventory" */
  const char *compensation; /* ce_type of its compensation, or NULL when it has none */
  const char *lock_key;     /* the schema's migration advisory lock key (decimal) */
  const char *port;         /* default HTTP port */
  /* The data of a successful command (a new reference), e.g. the authorization id. */
  json_t *(*result)(const participant_cmd_t *cmd);
} participant_role_t;

typedef struct participant_config {
  bt_common_config_t common;
  char *pg_dsn;
  int64_t pg_pool_size, pg_queue_max;
  char *brokers, *kafka_properties;
  char *topic, *group;
  int64_t max_in_flight;
  char *fail_rate, *never_answer_rate, *duplicate_rate; /* parsed into the doubles below */
  int64_t delay_ms;
  int64_t retry_min_ms, retry_max_ms;
  bool migrate;
} participant_config_t;

typedef struct participant_stats {
  bt_counter_t commands;   /* records consumed */
  bt_counter_t applied;    /* effects applied (commands and compensations) */
  bt_counter_t duplicates; /* command ids seen before: applied once, answered again */
  bt_counter_t refused;    /* business refusals answered `failure` */
  bt_counter_t silent;     /* replies withheld on purpose (never-answer rate or rule) */
  bt_counter_t replies;    /* replies delivered to Kafka (duplicates included) */
  bt_counter_t malformed;  /* records that are not a command: logged, committed, unanswered */
  bt_counter_t retries;    /* Postgres or Kafka errors retried with backoff */
  bt_gauge_t in_flight;    /* commands being worked on */
} participant_stats_t;

typedef struct participant_job participant_job_t;

/* The commit order of one partition: its jobs in offset order. */
typedef struct participant_part {
  int32_t partition;
  participant_job_t *head, *tail;
} participant_part_t;

typedef struct participant {
  const participant_role_t *role;
  participant_config_t cfg;
  double fail_rate, never_answer_rate, duplicate_rate;
  bt_app_t app;
  bt_http_server_t *http;
  bt_pg_pool_t *pg;
  bt_pg_stats_t pg_stats;
  bt_kafka_consumer_t *consumer;
  bt_kafka_producer_t *producer;
  bt_timers_t timers;
  participant_part_t *parts;
  size_t nparts, parts_cap;
  unsigned busy;  /* jobs inside Postgres or the producer: the drain waits for them */
  bool held, draining;
  participant_stats_t stats;
  char sql_apply[256];
} participant_t;

/* The whole process for one role: configuration, migration, then serving until a signal.
 * Returns the exit code. */
int participant_main(const participant_role_t *role, int argc, char **argv);

/* participant_job.c: the consumer's message callback (arg: the participant), and the drain
 * and close hooks of the jobs in flight. */
void participant_on_message(bt_kafka_consumer_t *c, const bt_kafka_message_t *m, void *arg);
void participant_jobs_drain(bt_app_t *app, void *arg);
void participant_jobs_close(bt_app_t *app, void *arg);

/* participant_proto.c: the protobuf encoding of commands and replies (proto/baton/v1/saga.proto).
 * Decodes a baton.v1.SagaCommand (value/len borrowed) into c->value and c->step_index, and
 * checks that it names the same saga, attempt, kind and command type as the record's ce_
 * headers (c, already parsed). Returns 0, or BT_EINVAL with why (the field at fault). */
int participant_proto_decode(participant_cmd_t *c, const void *value, size_t len, char *why,
                             size_t whysz) BT_MUSTCHECK;
/* Encodes the baton.v1.SagaReply answering c with `outcome` ("success", "failure" or "retry")
 * and data (JSON text or NULL, the payload). Returns a malloc'd buffer (the caller frees it)
 * and its length in *len, or NULL when out of memory. */
void *participant_proto_reply(const participant_cmd_t *c, const char *outcome, const char *data,
                              size_t *len);

/* participant_ledger.c: fills p->sql_apply, the call of the role schema's apply function
 * ($1 saga id, $2 step, $3 attempt, $4 kind, $5 command id, $6 type, $7 wanted outcome,
 * $8 result, $9 the step's result as the command carried it, $10 answered), which returns
 * one row: outcome, result, effect, answered, duplicate. */
void participant_ledger_init(participant_t *p);
/* Applies the role's schema (start-up only, blocking). Returns 0 or BT_EIO with errstr. */
int participant_ledger_migrate(participant_t *p, char *errstr, size_t errsz) BT_MUSTCHECK;

#endif
