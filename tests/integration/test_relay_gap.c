/* Gap safety of the store relay: concurrent appends from several writers to shared streams,
 * where a test-only trigger on baton.events holds the transactions of events typed "slow"
 * open for 100 ms per event before they commit, while the relay reads in small batches every few
 * milliseconds. The topic must hold every stored event of every stream, first appearances in
 * version order: no gap, no reordering. (With the store's commit-order positions, later
 * groups wait on the positions lock behind a slow one; the relay must still never see a later
 * position before an earlier one commits.)
 *
 * The appends really overlap in Postgres: three brokers (one relaying), each committing every
 * append in its own transaction (BATON_BROKER_APPEND_BATCH=1) on a pool of four, and the test
 * asserts from pg_stat_activity that several append transactions were open at once. Swapping
 * the positions lock for a sequence makes this test fail. */
#include <pthread.h>

#include "test_relay_common.h"

#define WRITERS 8
#define APPENDS 40          /* per writer */
#define STREAMS 12
#define SLOW_EVERY 7        /* every 7th append of a writer is slow */

static char cat[64], trigger[96];
#define BROKERS 3
static const char *broker_urls[BROKERS];
static volatile int writers_done;
static int max_open;
static int failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static int teardown(void **state) {
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  char sql[256];
  snprintf(sql, sizeof sql, "DROP TRIGGER IF EXISTS %s ON baton.events", trigger);
  rt_pg_exec(c, sql);
  rt_pg_exec(c, "DROP FUNCTION IF EXISTS baton.relay_test_slow()");
  PQfinish(c);
  return rt_teardown(state);
}

static void *writer(void *arg) {
  int w = (int)(intptr_t)arg;
  unsigned seed = (unsigned)(w * 7919 + getpid());
  for (int i = 0; i < APPENDS; i++) {
    char stream[128];
    snprintf(stream, sizeof stream, "%s-%d", cat, rand_r(&seed) % STREAMS);
    /* Ids are unique per writer and append; versions come from the store ("any"). */
    char body[1024];
    const char *type = i % SLOW_EVERY == SLOW_EVERY - 1 ? "slow" : "fast";
    snprintf(body, sizeof body,
             "{\"expected_version\":\"any\",\"events\":["
             "{\"specversion\":\"1.0\",\"id\":\"w%d-%d-a\",\"source\":\"/gap\",\"type\":\"%s\"},"
             "{\"specversion\":\"1.0\",\"id\":\"w%d-%d-b\",\"source\":\"/gap\",\"type\":\"%s\"}]}",
             w, i, type, w, i, type);
    char url[256];
    snprintf(url, sizeof url, "%s/v1/streams/%s/events", broker_urls[(w + i) % BROKERS], stream);
    bt_test_http_resp_t r;
    int st = bt_test_http("POST", url, "Content-Type: application/json\r\n", body, strlen(body), &r) == 0
                 ? r.status
                 : 0;
    bt_test_http_free(&r);
    if (st != 201) {
      pthread_mutex_lock(&mu);
      failures++;
      pthread_mutex_unlock(&mu);
    }
  }
  return NULL;
}

/* Samples how many append transactions are open at once, until the writers are done. */
static void *monitor(void *arg) {
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  while (!writers_done) {
    long long n = rt_pg_scalar(c,
                               "SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL "
                               "AND query LIKE '%append_batch%' AND pid <> pg_backend_pid()",
                               0, NULL);
    if (n > max_open)
      max_open = (int)n;
    rt_sleep_ms(5);
  }
  PQfinish(c);
  return NULL;
}

static void test_store_late_commits(void **state) {
  char topic[96], routes[256];
  snprintf(cat, sizeof cat, "rg%s", rt_run_id());
  snprintf(trigger, sizeof trigger, "relay_test_slow_%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 4);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_BATCH=5", "BATON_BROKER_RELAY_POLL=2ms",
                       "BATON_BROKER_RELAY_LEASE=2s", "BATON_BROKER_APPEND_BATCH=1",
                       "BATON_PG_POOL_SIZE=4", NULL};
  const char *writer_env[] = {routes, "BATON_BROKER_RELAY=false", "BATON_BROKER_APPEND_BATCH=1",
                              "BATON_PG_POOL_SIZE=4", NULL};
  rt_broker_t b, extra[BROKERS - 1];
  rt_broker_start(&b, "gap", env, "/readyz");
  broker_urls[0] = b.url;
  for (int i = 0; i < BROKERS - 1; i++) {
    rt_broker_start(&extra[i], "gap_writer", writer_env, "/readyz");
    broker_urls[i + 1] = extra[i].url;
  }
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 30000), 0);

  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_pg_exec(c, "CREATE OR REPLACE FUNCTION baton.relay_test_slow() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.type = 'slow' THEN PERFORM pg_sleep(0.1); END IF; "
                "RETURN NEW; END $$");
  char sql[256];
  snprintf(sql, sizeof sql,
           "CREATE TRIGGER %s BEFORE INSERT ON baton.events FOR EACH ROW "
           "EXECUTE FUNCTION baton.relay_test_slow()",
           trigger);
  rt_pg_exec(c, sql);

  pthread_t th[WRITERS], mon;
  pthread_create(&mon, NULL, monitor, NULL);
  uint64_t t0 = bt_test_now_ms();
  for (int w = 0; w < WRITERS; w++)
    pthread_create(&th[w], NULL, writer, (void *)(intptr_t)w);
  for (int w = 0; w < WRITERS; w++)
    pthread_join(th[w], NULL);
  writers_done = 1;
  pthread_join(mon, NULL);
  print_message("%d appends by %d writers through %d brokers in %llu ms; at most %d append "
                "transactions open at once\n",
                WRITERS * APPENDS, WRITERS, BROKERS, (unsigned long long)(bt_test_now_ms() - t0),
                max_open);
  assert_int_equal(failures, 0);
  assert_true(max_open >= 2);

  rt_oracle_t o;
  rt_oracle_load(&o, c, cat);
  assert_int_equal(rt_oracle_total(&o), WRITERS * APPENDS * 2);
  rt_recs_t recs = {0};
  size_t got = rt_consume(topic, (size_t)rt_oracle_total(&o), 60000, &recs);
  long long dups = rt_verify(&recs, &o);
  print_message("gap safety (store): %zu records, %lld events in %zu streams, %lld duplicates\n",
                recs.n, rt_oracle_total(&o), o.n, dups);
  assert_int_equal(got, (size_t)rt_oracle_total(&o));
  assert_int_equal(dups, 0);
  rt_recs_free(&recs);
  rt_oracle_free(&o);
  PQfinish(c);
  for (int i = 0; i < BROKERS - 1; i++)
    rt_broker_stop(&extra[i], SIGTERM);
  rt_broker_stop(&b, SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_store_late_commits, teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
