/* The service-outbox source of the relay: a table that a service writes in its own
 * transactions, in its own database, drained into Kafka and emptied as Kafka acknowledges.
 *
 * The table (the README has the same DDL):
 *
 *   CREATE TABLE outbox (
 *     position        bigserial PRIMARY KEY,
 *     txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
 *     topic           text NOT NULL,
 *     key             text,            -- record key; NULL: partitionkey extension, else subject
 *     id              text NOT NULL,   -- CloudEvents attributes
 *     type            text NOT NULL,
 *     source          text NOT NULL,
 *     subject         text,
 *     time            text,            -- RFC 3339
 *     datacontenttype text,
 *     data            bytea,           -- the record value
 *     extensions      jsonb,           -- {"name": "value", ...}, each sent as ce_<name>
 *     created_at      timestamptz NOT NULL DEFAULT now()
 *   );
 *
 * plus the relay's lease, which it creates itself when it may (or a DBA creates up front):
 *
 *   CREATE TABLE outbox_lease (name text PRIMARY KEY, holder text, expires_at timestamptz NOT NULL);
 *
 * Gap safety. Here positions come from a sequence, taken by concurrent transactions that
 * commit in any order: position 7 may become visible while position 6 is still uncommitted.
 * A relay that kept a cursor ("position > 7") would skip 6 forever: the classic outbox bug.
 * Two rules make that impossible and keep order:
 *  - Rows are deleted once Kafka has acknowledged them, and there is no cursor: a row that
 *    commits late is simply still in the table at the next round, so nothing is ever skipped.
 *  - A round relays, in position order, the rows before the first visible row whose
 *    transaction id is not yet below the xmin of the current snapshot (every transaction
 *    older than xmin has finished). Stopping there, rather than taking every row below xmin,
 *    matters when a transaction with a higher xid wrote an aggregate before one with a lower
 *    xid: the later write must not overtake the earlier. A row is therefore
 *    published only once every transaction that had already started writing when it was
 *    written has committed or aborted, so rows of such earlier transactions, which usually
 *    hold smaller positions, are published in the same round and before it, not after.
 * Per-aggregate order (one key, one partition) holds when the service serialises writes per
 * aggregate, as services do with a version column or a row lock: the second write's
 * transaction then inserts its outbox row only after the first one committed, so it gets a
 * larger position and is never visible without the first; delete-after-ack and the
 * "delivered prefix" rule of the relay engine keep the first published before the second.
 * A cost: xmin is cluster-wide, so a long-running transaction anywhere in that Postgres
 * delays the outbox (never loses or reorders it); the lag metrics show it. */
#include "relay_outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publish.h"

/* Creating the lease table needs CREATE on the schema, which a service may not grant; checking
 * first lets a DBA create it up front (with the DDL above) and grant the relay only DML. */
static const char setup_sql[] =
    "DO $$ BEGIN "
    "IF to_regclass('outbox_lease') IS NULL THEN "
    "PERFORM pg_advisory_xact_lock(hashtext('baton.outbox_lease.setup')); "
    "IF to_regclass('outbox_lease') IS NULL THEN "
    "CREATE TABLE outbox_lease (name text PRIMARY KEY, holder text, expires_at timestamptz NOT NULL); "
    "END IF; END IF; END $$";
static const char setup_lease_sql[] =
    "INSERT INTO outbox_lease (name, holder, expires_at) VALUES ($1, NULL, 'epoch') "
    "ON CONFLICT (name) DO NOTHING";

/* The lag, both from the primary key's index: the span of positions still in the table (an
 * upper bound on the rows waiting: rolled-back inserts leave holes) and the age of the
 * lowest one. An empty table reads 0 and 0. */
static const char lag_sql[] =
    "SELECT coalesce(max(position) - min(position) + 1, 0), "
    "coalesce((SELECT extract(epoch FROM now() - created_at) FROM outbox ORDER BY position LIMIT 1), 0) "
    "FROM outbox";

/* pg_current_snapshot() is this statement's snapshot, so "visible" and "below xmin" are
 * judged at the same instant. See the comment at the top: a round is the prefix of positions
 * before the first visible row whose transaction is not yet below xmin, never "every row
 * below xmin", which could publish a later write of an aggregate (lower xid) before an
 * earlier one (higher xid). The subquery scans the rows left in the table, which the relay
 * keeps short by deleting what Kafka acknowledged. */
static const char read_sql[] =
    "SELECT position, topic, key, id, source, type, subject, time, datacontenttype, data, "
    "extensions::text FROM outbox "
    "WHERE position < coalesce((SELECT min(position) FROM outbox "
    "WHERE txid >= pg_snapshot_xmin(pg_current_snapshot())), 9223372036854775807) "
    "ORDER BY position LIMIT $1";

static const char ack_sql[] = "DELETE FROM outbox WHERE position = ANY ($1::bigint[])";

enum { C_POSITION, C_TOPIC, C_KEY, C_ID, C_SOURCE, C_TYPE, C_SUBJECT, C_TIME,
       C_DATACONTENTTYPE, C_DATA, C_EXTENSIONS };

static size_t setup(bt_outbox_relay_t *w, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out,
                    size_t max) {
  BT_ASSERT(max >= 2);
  p->v[0] = w->lease_name;
  out[0] = (bt_pg_stmt_t){setup_sql, 0, NULL};
  out[1] = (bt_pg_stmt_t){setup_lease_sql, 1, p->v};
  return 2;
}

static size_t read_stmts(bt_outbox_relay_t *w, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out) {
  snprintf(p->buf[0], sizeof p->buf[0], "%zu", w->batch);
  p->v[0] = p->buf[0];
  out[0] = (bt_pg_stmt_t){lag_sql, 0, NULL};
  out[1] = (bt_pg_stmt_t){read_sql, 1, p->v};
  return 2;
}


static size_t on_read(bt_outbox_relay_t *w, const PGresult *const *res) {
  const broker_t *b = *(const broker_t *const *)w->src;
  const PGresult *lag = res[0], *rows = res[1];
  if (PQntuples(lag) == 1)
    bt_outbox_relay_lag(w, strtod(PQgetvalue(lag, 0, 0), NULL), strtod(PQgetvalue(lag, 0, 1), NULL));
  int n = PQntuples(rows);
  for (int i = 0; i < n; i++) {
    int64_t position = strtoll(PQgetvalue(rows, i, C_POSITION), NULL, 10);
    const char *topic = PQgetvalue(rows, i, C_TOPIC);
    char why[400];
    const char *refused = relay_worker_topic_refused(b, topic, why, sizeof why);
    broker_event_t ev = {
        .id = PQgetvalue(rows, i, C_ID),
        .source = PQgetvalue(rows, i, C_SOURCE),
        .type = PQgetvalue(rows, i, C_TYPE),
        .specversion = "1.0",
        .subject = relay_col(rows, i, C_SUBJECT),
        .time = relay_col(rows, i, C_TIME),
        .datacontenttype = relay_col(rows, i, C_DATACONTENTTYPE),
    };
    if (!refused && relay_worker_payload(w, &ev, relay_col(rows, i, C_DATA),
                                         relay_col(rows, i, C_EXTENSIONS), NULL, why,
                                         sizeof why) != 0)
      refused = why;
    /* A service wrote this row without our HTTP validation: hold it to the same CloudEvents
     * rules as a published event rather than put a malformed record into Kafka. */
    broker_parse_error_t perr;
    if (!refused && broker_event_validate(&ev, 0, &perr) != 0) {
      snprintf(why, sizeof why, "invalid CloudEvent (%s): %.300s", perr.attribute, perr.detail);
      refused = why;
    }
    const char *key = relay_col(rows, i, C_KEY) ? relay_col(rows, i, C_KEY) : broker_event_key(&ev, NULL);
    if (relay_worker_produce(w, position, topic, key, &ev, NULL, 0, refused) != 0)
      break;
  }
  return (size_t)n;
}

/* Deletes exactly the delivered rows, by position: rows between them that this round did not
 * read (their transaction was still above xmin) must stay. */
static size_t ack(bt_outbox_relay_t *w, size_t n, bt_outbox_relay_params_t *p,
                  bt_pg_stmt_t *out) {
  p->v[0] = bt_outbox_relay_positions_array(w, n);
  out[0] = (bt_pg_stmt_t){ack_sql, 1, p->v};
  return 1;
}

static const bt_outbox_relay_source_t outbox_ops = {
    .setup = setup,
    .lease_table = "outbox_lease",
    .read = read_stmts,
    .on_read = on_read,
    .ack = ack,
};

int relay_outbox_init(bt_outbox_relay_t *w, broker_t *b, bt_pg_pool_t *pool, const char *label,
                      bt_outbox_relay_budget_t *budget) {
  bt_outbox_relay_config_t cfg;
  relay_worker_config(b, label, RELAY_OUTBOX_LEASE, &cfg);
  /* The source's state is the broker itself, which outlives the relay: a copy of the pointer
   * keeps the engine's "free src when done" rule. */
  const broker_t **src = malloc(sizeof *src);
  if (!src)
    return BT_ENOMEM;
  *src = b;
  int rc = bt_outbox_relay_init(w, &b->app, pool, true, b->relay_producer, budget, &cfg, &outbox_ops, src);
  if (rc != 0)
    free(src);
  return rc;
}
