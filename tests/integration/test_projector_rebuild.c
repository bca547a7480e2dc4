/* Rebuild under live traffic and reads. Version 1 is built from the first half of the events;
 * POST /v1/projections/{name}/rebuild starts version 2 from the topic's beginning while the
 * second half is produced and a reader keeps reading, atomically in Redis, `current` and the
 * document of sample keys that exist throughout: no read ever finds the document missing.
 * The switch happens once version 2 caught up (current = 2, both stores agree), version 2
 * equals the oracle in both sinks, and after the grace period version 1's keys and tables are
 * gone. A second POST while one runs answers 409; an unknown projection 404. Then a kill -9
 * while version 3 builds: the next start resumes it and readers go from 2 to a complete 3. A
 * poison record is dead-lettered once, by version 1: rebuilds have no effect beyond their
 * own keys. */
#include "test_kafka_common.h"
#include "test_projector_common.h"

static pt_env_t env;
static char proj[64], topic[64], dlq[64];

enum { CUSTOMERS = 30, PHASE = 4000, SAMPLES = 20 };

/* What is left of version v: its tables plus its Redis keys. */
static long long left_of(redisContext *rc, PGconn *pg, int v) {
  char q[300], pattern[128];
  snprintf(q, sizeof q,
           "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'projector' "
           "AND table_name LIKE '%s_v%d%%'",
           proj, v);
  snprintf(pattern, sizeof pattern, "bt:proj:{%s}:v%d:*", proj, v);
  redisReply *rep =
      test_redis_cmd(rc, "EVAL %s 0 %s", "return #redis.call('KEYS',ARGV[1])", pattern);
  long long left = pt_sql_int(pg, q) + rep->integer;
  freeReplyObject(rep);
  return left;
}

/* Waits up to ms for version v's tables and Redis keys to be gone; returns what is left. */
static long long wait_dropped(redisContext *rc, PGconn *pg, int v, uint64_t ms) {
  uint64_t end = bt_test_now_ms() + ms;
  long long left = -1;
  while (bt_test_now_ms() < end) {
    left = left_of(rc, pg, v);
    if (left == 0)
      break;
    usleep(100000);
  }
  return left;
}

/* Makes version v of proj look exactly as a drop interrupted before its Postgres commit
 * leaves it: the versions row in state retired, both tables, an offsets row, and Redis keys
 * of every kind under bt:proj:{P}:v{v}:. */
static void leave_retired(redisContext *rc, PGconn *pg, int v) {
  char t[200], q[300], vs[16];
  snprintf(vs, sizeof vs, "%d", v);
  const char *params[] = {proj, vs, topic};
  PQclear(pt_sql(pg, "INSERT INTO projector.versions (projection, version, state) "
                     "VALUES ($1, $2::int, 'retired')", 2, params));
  PQclear(pt_sql(pg, "INSERT INTO projector.offsets VALUES ($1, $2::int, $3, 0, 7)", 3, params));
  snprintf(t, sizeof t, "projector.\"%s_v%d\"", proj, v);
  snprintf(q, sizeof q, "CREATE TABLE %s (key text PRIMARY KEY, doc jsonb NOT NULL)", t);
  PQclear(pt_sql(pg, q, 0, NULL));
  snprintf(t, sizeof t, "projector.\"%s_v%d_agg\"", proj, v);
  snprintf(q, sizeof q, "CREATE TABLE %s (aggregate text, grp text, total bigint)", t);
  PQclear(pt_sql(pg, q, 0, NULL));
  freeReplyObject(test_redis_cmd(rc, "SET bt:proj:{%s}:v%d:doc:I1 {}", proj, v));
  freeReplyObject(test_redis_cmd(rc, "ZADD bt:proj:{%s}:v%d:idx:by_customer:C1 0 x", proj, v));
  freeReplyObject(test_redis_cmd(rc, "HSET bt:proj:{%s}:v%d:agg:balance C1 5", proj, v));
  freeReplyObject(test_redis_cmd(rc, "HSET bt:proj:{%s}:v%d:off t:0 7", proj, v));
  freeReplyObject(test_redis_cmd(rc, "HSET bt:proj:{%s}:v%d:meta state retired", proj, v));
  assert_int_equal(left_of(rc, pg, v), 2 + 5);
}

static int setup(void **state) {
  (void)state;
  pt_setup_invoices(&env, "it_projector_rebuild", "reb", proj, sizeof proj, topic, sizeof topic);
  snprintf(dlq, sizeof dlq, "pt.rebdlq.%d", (int)getpid());
  kt_topic(dlq, 1);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  pt_teardown(&env);
  return 0;
}

static void produce(rd_kafka_t *rk, const pt_event_t *ev, int n) {
  for (int i = 0; i < n; i++) {
    size_t len;
    void *pb = pt_protobuf(&ev[i], &len);
    pt_produce(rk, topic, ev[i].after.id, pb, len);
    free(pb);
  }
  pt_flush(rk);
}

static int post(const char *name) {
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/projections/%s/rebuild", env.port, name);
  bt_test_http_resp_t resp;
  assert_int_equal(bt_test_http("POST", url, NULL, "", 0, &resp), 0);
  int st = resp.status;
  bt_test_http_free(&resp);
  return st;
}

/* current, and whether the sample's document exists in that version, read in one script. */
static int read_sample(redisContext *rc, const char *key, int *version) {
  static const char lua[] =
      "local v = redis.call('GET', 'bt:proj:{' .. ARGV[1] .. '}:current') "
      "if not v then return {0, 0} end "
      "return {tonumber(v), redis.call('EXISTS', 'bt:proj:{' .. ARGV[1] .. '}:v' .. v .. ':doc:' .. ARGV[2])}";
  redisReply *rep = test_redis_cmd(rc, "EVAL %s 0 %s %s", lua, proj, key);
  assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
  *version = (int)rep->element[0]->integer;
  int exists = (int)rep->element[1]->integer;
  freeReplyObject(rep);
  return exists;
}

static void test_rebuild_switches_atomically(void **state) {
  (void)state;
  /* The whole history first, so the samples are keys no later event touches. */
  pt_model_t m;
  pt_model_init(&m, CUSTOMERS, 5);
  pt_event_t *ev = calloc(2 * PHASE, sizeof *ev);
  assert_non_null(ev);
  for (int i = 0; i < 2 * PHASE; i++)
    ev[i] = pt_next(&m);
  char samples[SAMPLES][24];
  int ns = 0;
  for (int i = 0; i < PHASE && ns < SAMPLES; i++) {
    if (ev[i].op != PT_ISSUE)
      continue;
    bool touched = false;
    for (int k = i + 1; k < 2 * PHASE && !touched; k++)
      touched = strcmp(ev[k].after.id, ev[i].after.id) == 0;
    if (!touched)
      snprintf(samples[ns++], sizeof samples[0], "%s", ev[i].after.id);
  }
  assert_int_equal(ns, SAMPLES);

  rd_kafka_t *rk = pt_producer();
  /* One poison record: dead-lettered once by version 1, never again by the rebuilds. */
  static const char poison[] = "\xff\xff\xff not protobuf";
  pt_produce(rk, topic, "poison", poison, sizeof poison - 1);
  produce(rk, ev, PHASE);
  char env_dlq[128];
  snprintf(env_dlq, sizeof env_dlq, "BATON_PROJECTOR_DLQ_TOPIC=%s", dlq);
  const char *extra[] = {"BATON_PROJECTOR_REBUILD_GRACE=1s", "BATON_PROJECTOR_BATCH=200", env_dlq,
                         NULL};
  pt_start(&env, extra);
  redisContext *rc = pt_redis();
  PGconn *pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  pt_wait_applied(rc, pg, proj, PHASE + 1, 60000);

  assert_int_equal(post("no_such_projection"), 404);
  assert_int_equal(post(proj), 202);
  assert_int_equal(post(proj), 409);
  produce(rk, ev + PHASE, PHASE);

  uint64_t end = bt_test_now_ms() + 60000;
  long reads = 0;
  int version = 1, switched_at = -1;
  while (bt_test_now_ms() < end) {
    for (int i = 0; i < ns; i++) {
      if (!read_sample(rc, samples[i], &version))
        fail_msg("read %ld: %s missing from version %d", reads, samples[i], version);
      reads++;
    }
    if (version == 2 && switched_at < 0)
      switched_at = (int)reads;
    /* Go on reading past the switch and the grace period (the drop of version 1). */
    if (switched_at >= 0 && reads > switched_at + 40 * SAMPLES) {
      redisReply *rep = test_redis_cmd(rc, "EXISTS bt:proj:{%s}:v1:off", proj);
      long long gone = rep->integer == 0;
      freeReplyObject(rep);
      if (gone)
        break;
    }
    usleep(20000);
  }
  print_message("%ld reads, switched after %d\n", reads, switched_at);
  assert_true(switched_at >= 0);
  assert_int_equal(version, 2);
  pt_v = 2;
  pt_wait_applied(rc, pg, proj, 2 * PHASE + 1, 60000);
  pt_check_redis(rc, &m, proj, true);
  pt_check_pg(pg, &m, proj, true);
  char q[300];
  snprintf(q, sizeof q, "SELECT version FROM projector.current WHERE projection = '%s'", proj);
  assert_int_equal(pt_sql_int(pg, q), 2);
  char qv[300];
  snprintf(qv, sizeof qv,
           "SELECT string_agg(version || ':' || state, ',' ORDER BY version) FROM "
           "projector.versions WHERE projection = '%s'",
           proj);
  /* Version 1 is dropped after the grace period: tables, offsets, keys and its versions row
   * (the Postgres part commits before the Redis keys go, and those are gone already). */
  assert_int_equal(wait_dropped(rc, pg, 1, 10000), 0);
  PGresult *r = pt_sql(pg, qv, 0, NULL);
  assert_string_equal(PQgetvalue(r, 0, 0), "2:live");
  PQclear(r);
  redisReply *rep = test_redis_cmd(rc, "EXISTS bt:proj:{%s}:building", proj);
  assert_int_equal(rep->integer, 0);
  freeReplyObject(rep);

  /* A restart keeps version 2 live. From here the grace period is long, so that the kill -9s
   * below land before any drop. */
  const char *extra_long[] = {"BATON_PROJECTOR_REBUILD_GRACE=60s", "BATON_PROJECTOR_BATCH=200",
                              env_dlq, NULL};
  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  pt_start(&env, extra_long);
  pt_check_redis(rc, &m, proj, true);

  /* kill -9 in the middle of rebuilding version 3: the next start resumes it, and readers
   * go from 2 straight to a complete 3. This one is asked for from the command line. */
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", env.port);
  const char *cli[] = {bt_test_bin("baton-projector"), "rebuild", proj, url, NULL};
  assert_int_equal(pt_exit_code(bt_test_spawn(cli, NULL, env.log)), 0);
  usleep(300000);
  assert_int_equal(kill(env.pid, SIGKILL), 0);
  waitpid(env.pid, NULL, 0);
  env.pid = 0;
  pt_start(&env, extra_long);
  end = bt_test_now_ms() + 60000;
  do {
    for (int i = 0; i < ns; i++)
      if (!read_sample(rc, samples[i], &version))
        fail_msg("%s missing from version %d after the crash", samples[i], version);
    assert_true(version == 2 || version == 3);
    usleep(20000);
  } while (version != 3 && bt_test_now_ms() < end);
  assert_int_equal(version, 3);
  pt_v = 3;
  pt_wait_applied(rc, pg, proj, 2 * PHASE + 1, 60000);
  pt_check_redis(rc, &m, proj, true);
  pt_check_pg(pg, &m, proj, true);
  r = pt_sql(pg, qv, 0, NULL);
  assert_string_equal(PQgetvalue(r, 0, 0), "2:retired,3:live");
  PQclear(r);
  /* kill -9 during version 2's grace period: its tables and keys outlive the process, and
   * the next start drops them one (short) grace period later. */
  assert_int_equal(kill(env.pid, SIGKILL), 0);
  waitpid(env.pid, NULL, 0);
  env.pid = 0;
  snprintf(q, sizeof q,
           "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'projector' "
           "AND table_name LIKE '%s_v2%%'",
           proj);
  assert_true(pt_sql_int(pg, q) > 0);
  /* An older crash's leftover beside it: version 1 as a drop interrupted before its commit
   * leaves it (its retired row, tables, offsets and keys). One start drops both. */
  leave_retired(rc, pg, 1);
  r = pt_sql(pg, qv, 0, NULL);
  assert_string_equal(PQgetvalue(r, 0, 0), "1:retired,2:retired,3:live");
  PQclear(r);
  pt_start(&env, extra);
  assert_int_equal(wait_dropped(rc, pg, 2, 15000), 0);
  assert_int_equal(wait_dropped(rc, pg, 1, 15000), 0);
  r = pt_sql(pg, qv, 0, NULL);
  assert_string_equal(PQgetvalue(r, 0, 0), "3:live");
  PQclear(r);
  snprintf(q, sizeof q,
           "SELECT count(*) FROM projector.offsets WHERE projection = '%s' AND version <> 3", proj);
  assert_int_equal(pt_sql_int(pg, q), 0);
  pt_check_redis(rc, &m, proj, true);
  bt_test_kmsg_t *msgs = NULL;
  long ndl = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), dlq, 10000, &msgs);
  assert_int_equal(ndl, 1);
  assert_string_equal(bt_test_kmsg_header(&msgs[0], "baton_dl_class"), "decode");
  bt_test_kmsgs_free(msgs, ndl);
  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  pt_v = 1;
  free(ev);
  free(m.inv);
  redisFree(rc);
  PQfinish(pg);
  rd_kafka_destroy(rk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rebuild_switches_atomically),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
