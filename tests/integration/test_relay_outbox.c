/* Service outboxes (BATON_BROKER_OUTBOX_DSNS) against two databases of the test's own (the
 * second named by a multi-host URI, so the list's comma splitting is exercised):
 *  - rows reach their topic once each with the CloudEvents headers, the key column (else
 *    partitionkey), per-key order, and are deleted after Kafka's acknowledgement; the lease
 *    row lives in the service's database;
 *  - gap safety: the transaction holding the LOWER position commits LAST. The classic cursor
 *    relay publishes the higher one and skips the lower forever; here both arrive, the lower
 *    first, and the higher one is held back while the older transaction is open;
 *  - a late-committing row below the snapshot's xmin is still relayed (delete-after-ack);
 *  - a row that cannot be relayed (bad topic) holds the outbox until it is fixed, then all
 *    rows flow in order. */
#include "test_relay_common.h"

static char db[64], dsn[1024], topic[96];
/* A second service database, configured as a multi-host URI (a comma inside one DSN). */
static char db2[64], dsn2[1024];
static rt_broker_t broker;

/* A metric series of the outbox in database d: "<family>{relay="outbox:<d>"<labels>}". */
static const char *ob_series(const char *family, const char *d, const char *labels) {
  static char buf[4][256];
  static int k;
  char *out = buf[k++ % 4];
  snprintf(out, sizeof buf[0], "baton_broker_relay_%s{relay=\"outbox:%s\"%s}", family, d, labels);
  return out;
}


static int setup(void **state) {
  bt_test_env_load();
  snprintf(db, sizeof db, "relay_ob_%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.ob%s", rt_run_id());
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  char sql[256];
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
  rt_pg_exec(c, sql);
  PQfinish(c);
  snprintf(db2, sizeof db2, "relay_ob2_%s", rt_run_id());
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db2);
  c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_pg_exec(c, sql);
  PQfinish(c);
  rt_dsn_for_db(dsn, sizeof dsn, db);
  c = rt_pg_open(dsn);
  rt_pg_exec(c, rt_outbox_ddl);
  PQfinish(c);
  const char *base = bt_test_env("BATON_PG_DSN"); /* postgresql://user@host:port/db */
  const char *at = strchr(base + 13, '@'), *slash = strchr(base + 13, '/');
  if (strncmp(base, "postgresql://", 13) != 0 || !at || !slash || slash < at)
    fail_msg("the stack's DSN is not of the form postgresql://user@host:port/db");
  snprintf(dsn2, sizeof dsn2, "%.*s,%.*s/%s", (int)(slash - base), base, (int)(slash - at - 1),
           at + 1, db2);
  c = rt_pg_open(dsn2);
  rt_pg_exec(c, rt_outbox_ddl);
  PQfinish(c);
  rt_topic_create(topic, 3);
  char outbox_env[2200];
  snprintf(outbox_env, sizeof outbox_env, "BATON_BROKER_OUTBOX_DSNS=%s, %s", dsn, dsn2);
  /* No dead-letter topic: a row that cannot be relayed holds its outbox (the poison test). */
  const char *env[] = {outbox_env, "BATON_BROKER_RELAY_POLL=10ms", "BATON_BROKER_RELAY_LEASE=2s",
                       "BATON_BROKER_RELAY_DEAD_LETTER_TOPIC=", NULL};
  rt_broker_start(&broker, "outbox", env, "/readyz");
  if (rt_wait_metric(&broker, ob_series("leader", db, ""), 1, true, 30000) != 0 ||
      rt_wait_metric(&broker, ob_series("leader", db2, ""), 1, true, 30000) != 0)
    fail_msg("the broker never became the outboxes' leader");
  return 0;
}

static int teardown(void **state) {
  rt_broker_stop(&broker, SIGTERM);
  rt_teardown(state);
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  char sql[256];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db);
  rt_pg_exec(c, sql);
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db2);
  rt_pg_exec(c, sql);
  PQfinish(c);
  return 0;
}

/* Inserts one outbox row on c (in whatever transaction c is in). */
static void insert_row(PGconn *c, const char *topic_name, const char *key, const char *id,
                       const char *data, const char *extensions) {
  const char *v[6] = {topic_name, key, id, data, extensions, NULL};
  PQclear(rt_pg(c,
                "INSERT INTO outbox (topic, key, id, type, source, subject, datacontenttype, "
                "data, extensions) VALUES ($1, $2, $3, 'outbox.test', '/svc', 'subj', "
                "'application/json', convert_to($4, 'UTF8'), $5::jsonb)",
                5, v));
}

static long long outbox_rows(PGconn *c) {
  return rt_pg_scalar(c, "SELECT count(*) FROM outbox", 0, NULL);
}

static int wait_outbox_empty(PGconn *c, int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  while (outbox_rows(c) != 0) {
    if (bt_test_now_ms() > end)
      return -1;
    rt_sleep_ms(20);
  }
  return 0;
}

/* Index of the record with ce_id id, or -1. */
static long find(const rt_recs_t *r, const char *id) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->v[i].id, id) == 0)
      return (long)i;
  return -1;
}

#define AGGREGATES 10
#define PER_AGGREGATE 30

static void test_rows_relayed_and_deleted(void **state) {
  PGconn *c = rt_pg_open(dsn);
  /* Interleaved aggregates, each written in order (as a service with a version column does). */
  char key[64], id[96], data[64];
  for (int v = 1; v <= PER_AGGREGATE; v++)
    for (int a = 0; a < AGGREGATES; a++) {
      snprintf(id, sizeof id, "basic-%d-%d", a, v);
      snprintf(data, sizeof data, "{\"v\":%d}", v);
      if (a == 0) {
        /* No key column: the partitionkey extension is the key. */
        insert_row(c, topic, NULL, id, data,
                   "{\"partitionkey\":\"pk-0\",\"traceparent\":"
                   "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}");
      } else {
        snprintf(key, sizeof key, "agg-%d", a);
        insert_row(c, topic, key, id, data, NULL);
      }
    }
  assert_int_equal(wait_outbox_empty(c, 30000), 0);
  rt_recs_t recs = {0};
  assert_int_equal(rt_consume(topic, AGGREGATES * PER_AGGREGATE, 30000, &recs),
                   AGGREGATES * PER_AGGREGATE);
  /* Once each, per key in order. */
  int seen[AGGREGATES] = {0};
  size_t mine = 0;
  for (size_t i = 0; i < recs.n; i++) {
    int a, v;
    if (sscanf(recs.v[i].id, "basic-%d-%d", &a, &v) != 2)
      continue;
    mine++;
    char want_key[32];
    snprintf(want_key, sizeof want_key, a == 0 ? "pk-0" : "agg-%d", a);
    assert_string_equal(recs.v[i].key, want_key);
    char want_data[32];
    snprintf(want_data, sizeof want_data, "{\"v\":%d}", v);
    assert_string_equal(recs.v[i].value, want_data);
    if (v != seen[a] + 1)
      fail_msg("aggregate %d: version %d after %d", a, v, seen[a]);
    seen[a] = v;
  }
  assert_int_equal(mine, AGGREGATES * PER_AGGREGATE);
  rt_recs_free(&recs);
  /* The lease is in the service's database, held by the broker. */
  assert_int_equal(rt_pg_scalar(c, "SELECT count(*) FROM outbox_lease WHERE name = 'outbox' "
                                   "AND holder IS NOT NULL AND expires_at > now()", 0, NULL), 1);
  assert_true(rt_metric(&broker, ob_series("published_total", db, "")) >=
              AGGREGATES * PER_AGGREGATE);
  assert_int_equal(rt_wait_metric(&broker, ob_series("lag_events", db, ""), 0, true, 5000), 0);
  PQfinish(c);
}

static void test_lower_position_commits_last(void **state) {
  PGconn *a = rt_pg_open(dsn), *b = rt_pg_open(dsn);
  rt_pg_exec(a, "BEGIN");
  insert_row(a, topic, "gap-key", "gap-first", "{}", NULL); /* the lower position */
  insert_row(b, topic, "gap-key", "gap-second", "{}", NULL); /* autocommit: higher, visible */
  assert_true(rt_pg_scalar(b, "SELECT max(position) FROM outbox WHERE id = 'gap-second'", 0, NULL) >
              rt_pg_scalar(a, "SELECT max(position) FROM outbox WHERE id = 'gap-first'", 0, NULL));
  /* The relay polls every 10 ms: give it a hundred chances to publish gap-second. It must
   * not, because the transaction of gap-first (an older xid) is still open. */
  rt_sleep_ms(1000);
  assert_int_equal(rt_pg_scalar(b, "SELECT count(*) FROM outbox WHERE id = 'gap-second'", 0, NULL), 1);
  rt_pg_exec(a, "COMMIT");
  assert_int_equal(wait_outbox_empty(b, 10000), 0);
  rt_recs_t recs = {0};
  rt_consume(topic, 0, 10000, &recs);
  long first = find(&recs, "gap-first"), second = find(&recs, "gap-second");
  assert_true(first >= 0);
  assert_true(second >= 0);
  /* Same key, same partition: the lower position was published first. */
  assert_int_equal(recs.v[first].partition, recs.v[second].partition);
  assert_true(recs.v[first].offset < recs.v[second].offset);
  rt_recs_free(&recs);
  PQfinish(a);
  PQfinish(b);
}

static void test_late_commit_below_xmin(void **state) {
  /* b takes its transaction id first, a inserts the lower position, b inserts and commits:
   * b's row is below xmin (a's xid) and is relayed at once, a's commits later. A relay with a
   * cursor would have moved past a's position; delete-after-ack still finds it. */
  PGconn *a = rt_pg_open(dsn), *b = rt_pg_open(dsn);
  rt_pg_exec(b, "BEGIN");
  rt_pg_exec(b, "SELECT pg_current_xact_id()");
  rt_pg_exec(a, "BEGIN");
  insert_row(a, topic, "late-a", "late-first", "{}", NULL);
  insert_row(b, topic, "late-b", "late-second", "{}", NULL);
  rt_pg_exec(b, "COMMIT");
  uint64_t end = bt_test_now_ms() + 10000;
  while (rt_pg_scalar(b, "SELECT count(*) FROM outbox WHERE id = 'late-second'", 0, NULL) != 0) {
    assert_true(bt_test_now_ms() < end);
    rt_sleep_ms(20);
  }
  rt_sleep_ms(200);
  rt_pg_exec(a, "COMMIT");
  assert_int_equal(wait_outbox_empty(b, 10000), 0);
  rt_recs_t recs = {0};
  rt_consume(topic, 0, 10000, &recs);
  assert_true(find(&recs, "late-first") >= 0);
  assert_true(find(&recs, "late-second") >= 0);
  rt_recs_free(&recs);
  PQfinish(a);
  PQfinish(b);
}

/* The same aggregate written by two transactions whose ids are in the opposite order of
 * their writes: T2 takes the lower xid first, T3 one between, then T1 (highest xid) writes
 * the aggregate and commits, and T2 writes it after and commits. With T3 still running, xmin
 * is T3's xid: T2's row is below it and T1's is not. A relay that reads "every row below
 * xmin" publishes T2's (later) write before T1's; the prefix rule holds both back until T3
 * ends, then publishes them in position order. */
static void test_inverted_txids_keep_order(void **state) {
  PGconn *t1 = rt_pg_open(dsn), *t2 = rt_pg_open(dsn), *t3 = rt_pg_open(dsn);
  rt_pg_exec(t2, "BEGIN");
  long long x2 = rt_pg_scalar(t2, "SELECT pg_current_xact_id()::text::bigint", 0, NULL);
  rt_pg_exec(t3, "BEGIN");
  long long x3 = rt_pg_scalar(t3, "SELECT pg_current_xact_id()::text::bigint", 0, NULL);
  rt_pg_exec(t1, "BEGIN");
  insert_row(t1, topic, "inv-key", "inv-first", "{}", NULL);
  long long x1 = rt_pg_scalar(t1, "SELECT pg_current_xact_id()::text::bigint", 0, NULL);
  rt_pg_exec(t1, "COMMIT");
  insert_row(t2, topic, "inv-key", "inv-second", "{}", NULL);
  rt_pg_exec(t2, "COMMIT");
  assert_true(x2 < x3 && x3 < x1);
  /* The relay polls every 10 ms: a hundred chances to publish inv-second alone. */
  rt_sleep_ms(1000);
  assert_int_equal(rt_pg_scalar(t1, "SELECT count(*) FROM outbox WHERE id IN ('inv-first', "
                                    "'inv-second')", 0, NULL), 2);
  rt_pg_exec(t3, "COMMIT");
  assert_int_equal(wait_outbox_empty(t1, 10000), 0);
  rt_recs_t recs = {0};
  rt_consume(topic, 0, 10000, &recs);
  long first = find(&recs, "inv-first"), second = find(&recs, "inv-second");
  assert_true(first >= 0 && second >= 0);
  assert_int_equal(recs.v[first].partition, recs.v[second].partition);
  assert_true(recs.v[first].offset < recs.v[second].offset);
  rt_recs_free(&recs);
  PQfinish(t1);
  PQfinish(t2);
  PQfinish(t3);
}

static void test_poison_row_holds_until_fixed(void **state) {
  PGconn *c = rt_pg_open(dsn);
  double errs = rt_metric(&broker, ob_series("errors_total", db, ",class=\"data\""));
  insert_row(c, "not a topic", "poison", "poison-1", "{}", NULL);
  insert_row(c, topic, "poison", "poison-2", "{}", NULL);
  assert_int_equal(rt_wait_metric(&broker, ob_series("errors_total", db, ",class=\"data\""),
                                  errs + 1, false, 10000), 0);
  rt_sleep_ms(300);
  assert_int_equal(outbox_rows(c), 2); /* nothing after the bad row went first */
  PQclear(rt_pg(c, "UPDATE outbox SET topic = $1 WHERE id = 'poison-1'", 1, (const char *[]){topic}));
  assert_int_equal(wait_outbox_empty(c, 15000), 0);
  rt_recs_t recs = {0};
  rt_consume(topic, 0, 10000, &recs);
  long p1 = find(&recs, "poison-1"), p2 = find(&recs, "poison-2");
  assert_true(p1 >= 0 && p2 >= 0);
  assert_true(recs.v[p1].offset < recs.v[p2].offset);
  rt_recs_free(&recs);
  PQfinish(c);
}

/* The second outbox, in its own database, has its own worker and lease. */
static void test_second_outbox(void **state) {
  PGconn *c = rt_pg_open(dsn2);
  for (int i = 1; i <= 20; i++) {
    char id[32];
    snprintf(id, sizeof id, "second-%d", i);
    insert_row(c, topic, "second", id, "{}", NULL);
  }
  assert_int_equal(wait_outbox_empty(c, 15000), 0);
  assert_int_equal(rt_pg_scalar(c, "SELECT count(*) FROM outbox_lease WHERE name = 'outbox' "
                                   "AND holder IS NOT NULL", 0, NULL), 1);
  rt_recs_t recs = {0};
  rt_consume(topic, 0, 10000, &recs);
  long prev = -1;
  for (int i = 1; i <= 20; i++) {
    char id[32];
    snprintf(id, sizeof id, "second-%d", i);
    long at = find(&recs, id);
    assert_true(at >= 0);
    assert_true(prev < 0 || recs.v[at].offset > recs.v[prev].offset);
    prev = at;
  }
  rt_recs_free(&recs);
  PQfinish(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rows_relayed_and_deleted),
      cmocka_unit_test(test_second_outbox),
      cmocka_unit_test(test_lower_position_commits_last),
      cmocka_unit_test(test_late_commit_below_xmin),
      cmocka_unit_test(test_inverted_txids_keep_order),
      cmocka_unit_test(test_poison_row_holds_until_fixed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
