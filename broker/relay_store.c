/* The event-store source of the relay: baton.events in position order after a durable cursor
 * (baton.relay_progress), each event to the topic of its stream's category.
 *
 * Gap safety. The store assigns positions in commit order: a transaction takes them from the
 * single row of baton.positions, which it keeps locked until it commits, and Postgres makes a
 * transaction visible before it releases its locks. So whenever position q is visible, every
 * p < q is visible too or belongs to a transaction that aborted and will never exist. A plain
 * cursor "position > last relayed ORDER BY position", read by one statement (one snapshot),
 * therefore never skips an event that commits late: no later position can be visible before
 * it. (The classic skipped-event bug needs positions taken from a sequence by concurrent
 * transactions, which commit out of order; service outboxes are like that, see
 * relay_outbox.c.) */
#include "relay_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publish.h"

typedef struct relay_store {
  const broker_t *b;
  const broker_relay_routes_t *routes; /* borrowed from the relay */
} relay_store_t;

/* The relay's tables, created here rather than in the store's migrations so that the relay
 * stays one module; the advisory lock serialises replicas that start together. */
static const char setup_sql[] =
    "DO $$ BEGIN "
    "PERFORM pg_advisory_xact_lock(hashtext('baton.relay.setup')); "
    "IF to_regclass('baton.relay_progress') IS NULL THEN "
    "CREATE TABLE baton.relay_progress (name text PRIMARY KEY, position bigint NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now()); "
    "END IF; "
    "IF to_regclass('baton.relay_lease') IS NULL THEN "
    "CREATE TABLE baton.relay_lease (name text PRIMARY KEY, holder text, "
    "expires_at timestamptz NOT NULL); "
    "END IF; END $$";
static const char setup_progress_sql[] =
    "INSERT INTO baton.relay_progress (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";
static const char setup_lease_sql[] =
    "INSERT INTO baton.relay_lease (name, holder, expires_at) VALUES ($1, NULL, 'epoch') "
    "ON CONFLICT (name) DO NOTHING";

/* The lag: cursor, head, and the age of the oldest event after the cursor. */
static const char lag_sql[] =
    "SELECT p.position, (SELECT coalesce(max(position), 0) FROM baton.events), "
    "coalesce((SELECT extract(epoch FROM now() - e.recorded_at) FROM baton.events e "
    "WHERE e.position > p.position ORDER BY e.position LIMIT 1), 0) "
    "FROM baton.relay_progress p WHERE p.name = $1";

/* One statement, so one snapshot: see the comment at the top. The cursor is read from the
 * table in every round, never kept in memory, so that a leader always continues from what
 * the previous one (or its own last round) made durable. */
static const char read_sql[] =
    "SELECT e.position, e.stream, e.version, e.id, e.source, e.type, e.specversion, e.subject, "
    "e.time, e.datacontenttype, e.dataschema, e.data, e.extensions::text "
    "FROM baton.events e "
    "WHERE e.position > (SELECT position FROM baton.relay_progress WHERE name = $1) "
    "ORDER BY e.position LIMIT $2";

/* GREATEST: an update that arrives late (a retried or a deposed leader's) never moves the
 * cursor back over rows that a newer round already relayed. */
static const char ack_sql[] =
    "UPDATE baton.relay_progress SET position = GREATEST(position, $2::bigint), updated_at = now() "
    "WHERE name = $1";

enum { C_POSITION, C_STREAM, C_VERSION, C_ID, C_SOURCE, C_TYPE, C_SPECVERSION, C_SUBJECT,
       C_TIME, C_DATACONTENTTYPE, C_DATASCHEMA, C_DATA, C_EXTENSIONS };

static size_t setup(bt_outbox_relay_t *w, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out, size_t max) {
  BT_ASSERT(max >= 3);
  p->v[0] = w->lease_name;
  out[0] = (bt_pg_stmt_t){setup_sql, 0, NULL};
  out[1] = (bt_pg_stmt_t){setup_progress_sql, 1, p->v};
  out[2] = (bt_pg_stmt_t){setup_lease_sql, 1, p->v};
  return 3;
}

static size_t read_stmts(bt_outbox_relay_t *w, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out) {
  snprintf(p->buf[0], sizeof p->buf[0], "%zu", w->batch);
  p->v[0] = w->lease_name;
  p->v[1] = p->buf[0];
  out[0] = (bt_pg_stmt_t){lag_sql, 1, p->v};
  out[1] = (bt_pg_stmt_t){read_sql, 2, p->v};
  return 2;
}


static size_t on_read(bt_outbox_relay_t *w, const PGresult *const *res) {
  relay_store_t *st = w->src;
  const PGresult *lag = res[0], *rows = res[1];
  if (PQntuples(lag) == 1) {
    double cursor = strtod(PQgetvalue(lag, 0, 0), NULL), head = strtod(PQgetvalue(lag, 0, 1), NULL);
    bt_outbox_relay_lag(w, head > cursor ? head - cursor : 0, strtod(PQgetvalue(lag, 0, 2), NULL));
  }
  static const char *const skip[] = {"stream", "streamversion", NULL};
  int n = PQntuples(rows);
  for (int i = 0; i < n; i++) {
    int64_t position = strtoll(PQgetvalue(rows, i, C_POSITION), NULL, 10);
    const char *stream = PQgetvalue(rows, i, C_STREAM);
    const char *version = PQgetvalue(rows, i, C_VERSION);
    char buf[256], why[320], detail[200];
    const char *refused = NULL;
    const char *topic = broker_relay_routes_topic(st->routes, stream, buf, sizeof buf);
    if (relay_worker_topic_refused(st->b, topic, detail, sizeof detail)) {
      snprintf(why, sizeof why, "stream '%.100s': %s", stream, detail);
      refused = why;
    }
    broker_event_t ev = {
        .id = PQgetvalue(rows, i, C_ID),
        .source = PQgetvalue(rows, i, C_SOURCE),
        .type = PQgetvalue(rows, i, C_TYPE),
        .specversion = relay_col(rows, i, C_SPECVERSION) ? relay_col(rows, i, C_SPECVERSION) : "1.0",
        .subject = relay_col(rows, i, C_SUBJECT),
        .time = relay_col(rows, i, C_TIME),
        .datacontenttype = relay_col(rows, i, C_DATACONTENTTYPE),
        .dataschema = relay_col(rows, i, C_DATASCHEMA),
    };
    /* The stream and its version travel as extensions of our own; a stored extension of the
     * same name would make the header ambiguous, so ours wins. A row that cannot be decoded
     * is rejected with what could be decoded (its coordinates always). */
    if (!refused && relay_worker_payload(w, &ev, relay_col(rows, i, C_DATA),
                                         relay_col(rows, i, C_EXTENSIONS), skip, why,
                                         sizeof why) != 0)
      refused = why;
    const bt_kafka_header_t extra[2] = {
        {"ce_stream", stream, strlen(stream)},
        {"ce_streamversion", version, strlen(version)},
    };
    /* The key is the partitionkey extension, else the stream id, deliberately not the subject
     * (which publish falls back to): every event of a stream must land in one partition for
     * the stream's order to survive in Kafka, and events of one stream may carry different
     * subjects. */
    const char *key = broker_event_key(&ev, stream);
    if (relay_worker_produce(w, position, topic, key, &ev, extra, 2, refused) != 0)
      break;
  }
  return (size_t)n;
}

static size_t ack(bt_outbox_relay_t *w, size_t n, bt_outbox_relay_params_t *p,
                  bt_pg_stmt_t *out) {
  snprintf(p->buf[0], sizeof p->buf[0], "%lld", (long long)bt_outbox_relay_position(w, n - 1));
  p->v[0] = w->lease_name;
  p->v[1] = p->buf[0];
  out[0] = (bt_pg_stmt_t){ack_sql, 2, p->v};
  return 1;
}

static const bt_outbox_relay_source_t store_ops = {
    .setup = setup,
    .lease_table = "baton.relay_lease",
    .read = read_stmts,
    .on_read = on_read,
    .ack = ack,
};

int relay_store_init(bt_outbox_relay_t *w, broker_t *b, bt_pg_pool_t *pool,
                     const broker_relay_routes_t *routes, bt_outbox_relay_budget_t *budget) {
  relay_store_t *st = calloc(1, sizeof *st);
  if (!st)
    return BT_ENOMEM;
  st->b = b;
  st->routes = routes;
  bt_outbox_relay_config_t cfg;
  relay_worker_config(b, "store", "store", &cfg);
  int rc = bt_outbox_relay_init(w, &b->app, pool, true, b->relay_producer, budget, &cfg, &store_ops, st);
  if (rc != 0)
    free(st);
  return rc;
}
