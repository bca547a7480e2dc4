/* Optimistic concurrency under contention: 16 writers on ONE stream, each looping "read the
 * current version, append with expected_version = that version, retry on 409". Afterwards
 * an independent SQL connection checks that the versions are dense from 1, that each version
 * has exactly one winner (the writer that was answered 201 for it), that no refused event was
 * stored, and that every 409 carried a plausible true current version.
 * The contention is real inside Postgres: the writers go through two brokers, each committing
 * every append in a transaction of its own (BATON_BROKER_APPEND_BATCH=1) with two in flight,
 * and a monitor watching pg_stat_activity asserts that append transactions of ours did run at
 * the same time. */
#include <pthread.h>

#include "test_store_util.h"

enum { WRITERS = 16, WINS = 20, N = WRITERS * WINS, MAX_ATTEMPTS = 4000 };

enum { BROKERS = 2 };
#define APP_NAME "it_store_concurrency"

static store_broker_t brs[BROKERS];
static char stream[128];

typedef struct attempt {
  int status;
  long long expected;
  long long version;   /* 201: first_version; 409: current_version */
  long long next_read; /* the version this writer read next (-1: none) */
} attempt_t;

typedef struct writer {
  int id;
  attempt_t *attempts;
  int n;
  int wins;
  int errors; /* answers other than 201/409 (and failed reads) */
} writer_t;

static int setup(void **state) {
  bt_test_env_load();
  /* application_name marks our brokers' sessions for the monitor: other tests may append at
   * the same time. */
  static char dsn[1024];
  const char *base = bt_test_env("BATON_PG_DSN");
  snprintf(dsn, sizeof dsn, "BATON_PG_DSN=%s%sapplication_name=" APP_NAME, base,
           strchr(base, '?') ? "&" : "?");
  const char *extra[] = {dsn, "BATON_BROKER_APPEND_BATCH=1", NULL};
  store_broker_start(&brs[0], "it_store_concurrency_0", extra);
  store_broker_start(&brs[1], "it_store_concurrency_1", extra);
  snprintf(stream, sizeof stream, "it-contended-%s", store_run_id());
  return 0;
}

static int teardown(void **state) {
  for (int i = 0; i < BROKERS; i++)
    store_broker_stop(&brs[i]);
  return 0;
}

/* The stream's current version through the API (0 while it does not exist), or -1. */
static long long current_version(const store_broker_t *br) {
  char path[256];
  snprintf(path, sizeof path, "/v1/streams/%s/events?from=1000000000&limit=1", stream);
  json_t *doc = NULL;
  int st = store_http(br, "GET", path, NULL, &doc, NULL);
  long long v = st == 404   ? 0
                : st == 200 ? json_integer_value(json_object_get(doc, "stream_version"))
                            : -1;
  json_decref(doc);
  return v;
}

static void *writer_main(void *arg) {
  writer_t *w = arg;
  const store_broker_t *br = &brs[w->id % BROKERS];
  char path[256];
  snprintf(path, sizeof path, "/v1/streams/%s/events", stream);
  long long v = current_version(br);
  while (w->wins < WINS && w->n < MAX_ATTEMPTS) {
    if (v < 0) {
      w->errors++;
      v = current_version(br);
      continue;
    }
    attempt_t *a = &w->attempts[w->n];
    char expected[32], prefix[32];
    snprintf(expected, sizeof expected, "%lld", v);
    snprintf(prefix, sizeof prefix, "w%d", w->id);
    char *body = store_append_body(expected, prefix, w->n, 1); /* id "w<writer>-<attempt>" */
    json_t *doc = NULL;
    a->status = store_http(br, "POST", path, body, &doc, NULL);
    a->expected = v;
    free(body);
    if (a->status == 201) {
      a->version = json_integer_value(json_object_get(doc, "first_version"));
      w->wins++;
    } else if (a->status == 409) {
      a->version = json_integer_value(json_object_get(doc, "current_version"));
    } else {
      w->errors++;
    }
    json_decref(doc);
    v = current_version(br);
    a->next_read = v;
    w->n++;
  }
  return NULL;
}

/* Samples our brokers' sessions until told to stop: the most append transactions seen active at
 * once, and how many samples caught one waiting for a lock held by another. */
typedef struct monitor {
  volatile int stop;
  long long max_active, lock_waits, samples;
} monitor_t;

static void *monitor_main(void *arg) {
  monitor_t *m = arg;
  PGconn *pg = store_pg();
  while (!m->stop) {
    PGresult *r = store_sql(
        pg,
        "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
        "FROM pg_stat_activity WHERE application_name = '" APP_NAME "' AND state = 'active' "
        "AND query LIKE '%baton.append_batch%'",
        0, NULL);
    long long active = atoll(PQgetvalue(r, 0, 0)), waiting = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (active > m->max_active)
      m->max_active = active;
    m->lock_waits += waiting > 0;
    m->samples++;
    usleep(1000);
  }
  PQfinish(pg);
  return NULL;
}

static void test_sixteen_writers_one_stream(void **state) {
  writer_t w[WRITERS];
  pthread_t th[WRITERS], mon;
  monitor_t m = {0};
  assert_int_equal(pthread_create(&mon, NULL, monitor_main, &m), 0);
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer_t){.id = i, .attempts = calloc(MAX_ATTEMPTS, sizeof(attempt_t))};
    assert_non_null(w[i].attempts);
    assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++)
    pthread_join(th[i], NULL);
  m.stop = 1;
  pthread_join(mon, NULL);
  print_message("monitor: %lld samples, at most %lld append transactions at once, %lld samples "
                "with one waiting for a lock\n",
                m.samples, m.max_active, m.lock_waits);
  /* Several append transactions really overlapped in Postgres (and so contended for the
   * stream's row lock): without this, the test would prove nothing about concurrency. */
  assert_true(m.max_active >= 2);
  assert_true(m.lock_waits >= 1);

  /* The oracle: what the table holds, by version. */
  PGconn *pg = store_pg();
  const char *p[] = {stream};
  PGresult *r = store_sql(
      pg, "SELECT version, id FROM baton.events WHERE stream = $1 ORDER BY version", 1, p);
  int rows = PQntuples(r);
  static char ids[N + 1][32];
  for (int i = 0; i < rows; i++) {
    long long v = atoll(PQgetvalue(r, i, 0));
    if (v != i + 1)
      fail_msg("versions are not dense: row %d has version %lld", i, v);
    if (i < N)
      snprintf(ids[i + 1], sizeof ids[0], "%s", PQgetvalue(r, i, 1));
  }
  PQclear(r);
  assert_int_equal(rows, N);
  assert_int_equal(store_sql_int(pg, "SELECT version FROM baton.streams WHERE stream = $1", 1, p),
                   N);
  PQfinish(pg);

  int winners[N + 1] = {0}, attempts = 0, conflicts = 0;
  for (int i = 0; i < WRITERS; i++) {
    assert_int_equal(w[i].errors, 0);
    assert_int_equal(w[i].wins, WINS);
    for (int k = 0; k < w[i].n; k++) {
      const attempt_t *a = &w[i].attempts[k];
      char id[32];
      snprintf(id, sizeof id, "w%d-%d", i, k);
      attempts++;
      if (a->status == 201) {
        /* The version it was given follows the one it expected and holds its event. */
        assert_int_equal(a->version, a->expected + 1);
        assert_true(a->version >= 1 && a->version <= N);
        assert_string_equal(ids[a->version], id);
        winners[a->version]++;
      } else {
        conflicts++;
        /* A loser's event was not stored anywhere. */
        for (int v = 1; v <= N; v++)
          assert_string_not_equal(ids[v], id);
        /* Its current version is a version the stream really reached after the one it read,
         * and no later read of the same writer went back before it. */
        assert_true(a->version > a->expected);
        assert_true(a->version <= N);
        if (a->next_read >= 0)
          assert_true(a->next_read >= a->version);
      }
    }
  }
  for (int v = 1; v <= N; v++)
    if (winners[v] != 1)
      fail_msg("version %d has %d winners", v, winners[v]);
  print_message("%d writers: %d versions, %d attempts, %d conflicts answered 409\n", WRITERS, N,
                attempts, conflicts);
  assert_true(conflicts > 0); /* there was contention to resolve */
  for (int i = 0; i < WRITERS; i++)
    free(w[i].attempts);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sixteen_writers_one_stream),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
