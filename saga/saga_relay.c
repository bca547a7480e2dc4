/* The saga's commands reach Kafka through the runtime's outbox relay (common/outbox_relay.h):
 * saga.outbox is a source like the broker's service outboxes. Each transition inserts its
 * command in the same transaction as the saga row (saga_txn.c), so a command is never lost
 * across kill -9 and never sent for a transition that rolled back.
 *
 * Gap safety follows broker/relay_outbox.c: rows are deleted once Kafka acknowledged them
 * (no cursor to skip a late commit), and a round stops at the first visible row whose
 * transaction is not yet below the snapshot's xmin, so a saga's next command can never
 * overtake the previous one (transitions of one saga are serialised by its seq guard).
 *
 * A row holds the record in the relay layout: CloudEvents attributes in columns, the other
 * ce_ headers in `extensions` without their prefix (traceparent under its own name), the
 * value in `data`; the record is rebuilt here as saga_wire built it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "saga.h"

#define SAGA_RELAY_LEASE "commands"
#define MAX_HEADERS 24

static const char lag_sql[] =
    "SELECT coalesce(max(position) - min(position) + 1, 0), "
    "coalesce((SELECT extract(epoch FROM now() - created_at) FROM saga.outbox "
    "ORDER BY position LIMIT 1), 0) FROM saga.outbox";

static const char read_sql[] =
    "SELECT position, topic, key, id, type, source, subject, datacontenttype, data, "
    "extensions::text FROM saga.outbox "
    "WHERE position < coalesce((SELECT min(position) FROM saga.outbox "
    "WHERE txid >= pg_snapshot_xmin(pg_current_snapshot())), 9223372036854775807) "
    "ORDER BY position LIMIT $1";

static const char ack_sql[] = "DELETE FROM saga.outbox WHERE position = ANY ($1::bigint[])";

enum { C_POSITION, C_TOPIC, C_KEY, C_ID, C_TYPE, C_SOURCE, C_SUBJECT, C_CONTENTTYPE, C_DATA,
       C_EXTENSIONS };

static size_t setup(bt_outbox_relay_t *r, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out,
                    size_t max) {
  (void)r, (void)p, (void)out, (void)max;
  return 0; /* migration 2 created the lease table and its row */
}

static size_t read_stmts(bt_outbox_relay_t *r, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out) {
  snprintf(p->buf[0], sizeof p->buf[0], "%zu", r->batch);
  p->v[0] = p->buf[0];
  out[0] = (bt_pg_stmt_t){lag_sql, 0, NULL};
  out[1] = (bt_pg_stmt_t){read_sql, 1, p->v};
  return 2;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* bytea in hex output (the relay sets bytea_output = hex in every read transaction). */
static char *unhex(bt_outbox_relay_t *r, const char *text, size_t *len) {
  size_t n = strlen(text);
  if (n < 2 || text[0] != '\\' || text[1] != 'x' || n % 2)
    return NULL;
  char *out = bt_arena_alloc(&r->arena, (n - 2) / 2 + 1);
  for (size_t i = 0; out && i < (n - 2) / 2; i++) {
    int hi = hexval(text[2 + 2 * i]), lo = hexval(text[3 + 2 * i]);
    if (hi < 0 || lo < 0)
      return NULL;
    out[i] = (char)(hi << 4 | lo);
  }
  *len = (n - 2) / 2;
  return out;
}

static const char *col(const PGresult *res, int row, int c) {
  return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

/* One row as the binary-mode record saga_wire built; why is set when the row is unusable. */
static int produce_row(bt_outbox_relay_t *r, const PGresult *rows, int i) {
  int64_t position = strtoll(PQgetvalue(rows, i, C_POSITION), NULL, 10);
  bt_kafka_header_t h[MAX_HEADERS];
  size_t nh = 0;
  static const struct {
    const char *name;
    int col;
  } attrs[] = {{"ce_id", C_ID},           {"ce_type", C_TYPE},
               {"ce_source", C_SOURCE},   {"ce_subject", C_SUBJECT},
               {"content-type", C_CONTENTTYPE}};
  h[nh++] = (bt_kafka_header_t){"ce_specversion", "1.0", 3};
  for (size_t k = 0; k < BT_ARRAY_LEN(attrs); k++) {
    const char *v = col(rows, i, attrs[k].col);
    if (v)
      h[nh++] = (bt_kafka_header_t){attrs[k].name, v, strlen(v)};
  }
  const char *why = NULL;
  const char *ext = col(rows, i, C_EXTENSIONS);
  json_t *obj = ext ? json_loads(ext, 0, NULL) : NULL;
  if (ext && !json_is_object(obj))
    why = "extensions is not a JSON object";
  const char *name;
  json_t *v;
  json_object_foreach(obj, name, v) {
    if (!json_is_string(v))
      continue;
    if (nh == MAX_HEADERS) {
      why = "too many extensions";
      break;
    }
    bool w3c = strcmp(name, "traceparent") == 0 || strcmp(name, "tracestate") == 0;
    size_t nlen = strlen(name) + 4;
    char *hn = bt_arena_alloc(&r->arena, nlen);
    char *hv = bt_arena_strdup(&r->arena, json_string_value(v));
    if (!hn || !hv) {
      why = "out of memory";
      break;
    }
    snprintf(hn, nlen, "%s%s", w3c ? "" : "ce_", name);
    h[nh++] = (bt_kafka_header_t){hn, hv, strlen(hv)};
  }
  json_decref(obj);
  size_t vlen = 0;
  const char *data = col(rows, i, C_DATA);
  char *value = data ? unhex(r, data, &vlen) : NULL;
  if (data && !value && !why)
    why = "data is not a hex bytea value";
  const char *key = col(rows, i, C_KEY);
  bt_kafka_record_t rec = {PQgetvalue(rows, i, C_TOPIC), BT_KAFKA_PARTITION_ANY, key,
                           key ? strlen(key) : 0, value, vlen, h, nh};
  if (why)
    return bt_outbox_relay_reject(r, position, &rec, why);
  return bt_outbox_relay_produce(r, position, &rec);
}

static size_t on_read(bt_outbox_relay_t *r, const PGresult *const *res) {
  const PGresult *lag = res[0], *rows = res[1];
  if (PQntuples(lag) == 1)
    bt_outbox_relay_lag(r, strtod(PQgetvalue(lag, 0, 0), NULL), strtod(PQgetvalue(lag, 0, 1), NULL));
  int n = PQntuples(rows);
  for (int i = 0; i < n; i++)
    if (produce_row(r, rows, i) != 0)
      break;
  return (size_t)n;
}

/* Deletes exactly the delivered rows: rows between them that this round did not read (their
 * transaction was still above xmin) must stay. */
static size_t ack(bt_outbox_relay_t *r, size_t n, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out) {
  p->v[0] = bt_outbox_relay_positions_array(r, n);
  out[0] = (bt_pg_stmt_t){ack_sql, 1, p->v};
  return 1;
}

static const bt_outbox_relay_source_t saga_outbox_ops = {
    .lease_table = "saga.outbox_lease",
    .setup = setup,
    .read = read_stmts,
    .on_read = on_read,
    .ack = ack,
};

static int start_producer(saga_t *s) {
  bt_kafka_producer_config_t kc = {
      .brokers = s->cfg.kafka_brokers,
      .properties = s->cfg.kafka_properties,
      .delivery_timeout_ms = (uint32_t)s->cfg.kafka_delivery_timeout_ms,
      /* The relay's budget plus a margin (a round's first record goes even over budget). */
      .queue_max_messages = (uint32_t)(s->cfg.relay_max_inflight_msgs + 1024),
      .queue_max_kbytes = (uint32_t)(s->cfg.relay_max_inflight_bytes / 1024 * 2 + 16384),
      /* The relay re-sends in order from its durable progress: a gap must stop it. */
      .gapless = true,
  };
  char err[256];
  if (bt_kafka_producer_new(&s->producer, &s->app, &kc, err) != 0) {
    bt_log_error("cannot create the Kafka producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_producer_register_metrics(s->producer);
  return 0;
}

static void relay_drain(bt_app_t *app, void *arg) {
  (void)app;
  bt_outbox_relay_drain(arg);
}

static void relay_close(bt_app_t *app, void *arg) {
  (void)app;
  bt_outbox_relay_close(arg);
}

int saga_relay_start(saga_t *s) {
  int rc = start_producer(s);
  if (rc != 0)
    return rc;
  /* A pool of its own: relay reads and deletes must not queue behind transitions. */
  bt_pg_pool_config_t pc = {.dsn = s->cfg.pg_dsn, .name = "relay", .size = 1, .queue_max = 16};
  bt_pg_pool_t *pool;
  if (bt_pg_pool_new(&pool, s->app.loop, &pc) != 0)
    return BT_ENOMEM;
  s->relay_budget.max_msgs = (uint64_t)s->cfg.relay_max_inflight_msgs;
  s->relay_budget.max_bytes = (uint64_t)s->cfg.relay_max_inflight_bytes;
  bt_outbox_relay_config_t cfg = {
      .label = "commands",
      .lease_name = SAGA_RELAY_LEASE,
      .metrics_prefix = "baton_saga_relay",
      .lease_ms = (uint64_t)s->cfg.relay_lease_ms,
      .poll_ms = (uint64_t)s->cfg.relay_poll_ms,
      .batch = (size_t)s->cfg.relay_batch,
      .dead_letter_topic = s->cfg.relay_dead_letter_topic,
      .dead_letter_after = 3,
      .max_failed_rounds = 5,
  };
  /* The engine frees src when done; the source needs no state of its own. */
  void *src = malloc(1);
  if (!src || bt_outbox_relay_init(&s->relay, &s->app, pool, true, s->producer, &s->relay_budget,
                                   &cfg, &saga_outbox_ops, src) != 0) {
    free(src);
    bt_pg_pool_close(pool);
    return BT_ENOMEM;
  }
  bt_app_on_shutdown(&s->app, relay_drain, relay_close, &s->relay);
  bt_outbox_relay_t *rs[] = {&s->relay};
  bt_outbox_relay_register_metrics(rs, 1, &s->relay_budget);
  bt_outbox_relay_start(&s->relay);
  s->relay_on = true;
  bt_log_info("command relay started", "{s:I, s:I, s:I}", "batch",
              (json_int_t)s->cfg.relay_batch, "poll_ms", (json_int_t)s->cfg.relay_poll_ms,
              "lease_ms", (json_int_t)s->cfg.relay_lease_ms);
  return 0;
}

void saga_relay_nudge(saga_t *s) {
  if (s->relay_on)
    bt_outbox_relay_nudge(&s->relay);
}
