/* Appends while Postgres restarts (`./dev pg-restart`): no append may be answered 201 (or 200)
 * unless its events are in the table afterwards, at the versions the answer gave. Appends
 * whose outcome was unknown (503 outcome_unknown, a lost answer) or refused for the outage
 * are retried unchanged after Postgres is back: idempotency must make each land exactly once.
 * The SQL oracle is a connection of the test's own, opened after the restart. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "test_store_util.h"

enum { WRITERS = 8, MAX_APPENDS = 20000 };

static store_broker_t br;
static atomic_bool stop;

typedef struct rec {
  int status;
  char error[32];
  long long first; /* first_version of a 200/201 */
} rec_t;

typedef struct writer {
  int id;
  char stream[128];
  rec_t *recs;
  int n;
} writer_t;

static int post(writer_t *w, int k, json_t **doc) {
  char path[256], prefix[32];
  snprintf(path, sizeof path, "/v1/streams/%s/events", w->stream);
  snprintf(prefix, sizeof prefix, "r%d", w->id);
  char *body = store_append_body("\"any\"", prefix, k, 1); /* event id "r<writer>-<k>" */
  int st = store_http(&br, "POST", path, body, doc, NULL);
  free(body);
  return st;
}

static void *writer_main(void *arg) {
  writer_t *w = arg;
  while (!atomic_load(&stop) && w->n < MAX_APPENDS) {
    rec_t *r = &w->recs[w->n];
    json_t *doc = NULL;
    r->status = post(w, w->n, &doc);
    snprintf(r->error, sizeof r->error, "%s", jstr(doc, "error"));
    if (r->status == 200 || r->status == 201)
      r->first = json_integer_value(json_object_get(doc, "first_version"));
    json_decref(doc);
    w->n++;
    if (r->status != 200 && r->status != 201)
      usleep(20000); /* the broker said to come back later; don't spin */
  }
  return NULL;
}

static int setup(void **state) {
  bt_test_env_load();
  store_broker_start(&br, "it_store_pgrestart", NULL);
  return 0;
}

static int teardown(void **state) {
  store_broker_stop(&br);
  return 0;
}

static void test_appends_across_pg_restart(void **state) {
  writer_t w[WRITERS];
  pthread_t th[WRITERS];
  atomic_store(&stop, false);
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer_t){.id = i, .recs = calloc(MAX_APPENDS, sizeof(rec_t))};
    snprintf(w[i].stream, sizeof w[i].stream, "it-pgrestart-%s-%d", store_run_id(), i);
    assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
  }
  usleep(700 * 1000);
  assert_int_equal(bt_test_sh("./dev pg-restart >/dev/null 2>&1"), 0);
  /* Keep appending until every writer has had successes after the restart. */
  uint64_t deadline = bt_test_now_ms() + 30000;
  int before[WRITERS];
  for (int i = 0; i < WRITERS; i++)
    before[i] = w[i].n;
  for (;;) {
    usleep(100 * 1000);
    bool all = true;
    for (int i = 0; i < WRITERS; i++) {
      int n = w[i].n, ok = 0;
      for (int k = before[i]; k < n; k++)
        ok += w[i].recs[k].status == 201;
      all &= ok >= 5;
    }
    if (all || bt_test_now_ms() > deadline)
      break;
  }
  atomic_store(&stop, true);
  for (int i = 0; i < WRITERS; i++)
    pthread_join(th[i], NULL);

  /* Retry every append whose outcome the client does not know as a success. */
  int acked = 0, unknown = 0, refused = 0, retried_created = 0;
  for (int i = 0; i < WRITERS; i++) {
    for (int k = 0; k < w[i].n; k++) {
      rec_t *r = &w[i].recs[k];
      if (r->status == 200 || r->status == 201) {
        acked++;
        continue;
      }
      if (strcmp(r->error, "outcome_unknown") == 0 || r->status == 0)
        unknown++;
      else
        refused++;
      json_t *doc = NULL;
      int st = post(&w[i], k, &doc);
      if (st != 200 && st != 201)
        fail_msg("retry of r%d-%d after the restart: %d %s", i, k, st, jstr(doc, "error"));
      retried_created += st == 201;
      r->status = st;
      r->first = json_integer_value(json_object_get(doc, "first_version"));
      json_decref(doc);
    }
  }
  print_message("%d appends acknowledged during the test, %d with an unknown outcome, %d refused "
                "(%d of the retries created their event)\n",
                acked, unknown, refused, retried_created);

  /* The oracle: every acknowledged append is in the table, once, at the version it was told;
   * and the table holds nothing else. */
  PGconn *pg = store_pg();
  for (int i = 0; i < WRITERS; i++) {
    const char *p[] = {w[i].stream};
    PGresult *r = store_sql(
        pg, "SELECT id, version FROM baton.events WHERE stream = $1 ORDER BY version", 1, p);
    int rows = PQntuples(r);
    assert_int_equal(rows, w[i].n);
    char **by_version = calloc((size_t)rows + 1, sizeof *by_version);
    for (int k = 0; k < rows; k++) {
      long long v = atoll(PQgetvalue(r, k, 1));
      assert_int_equal(v, k + 1); /* dense */
      by_version[v] = PQgetvalue(r, k, 0);
    }
    for (int k = 0; k < w[i].n; k++) {
      char id[32];
      snprintf(id, sizeof id, "r%d-%d", i, k);
      long long v = w[i].recs[k].first;
      if (v < 1 || v > rows || strcmp(by_version[v], id) != 0)
        fail_msg("%s was acknowledged at version %lld, which the table does not hold for it", id,
                 v);
    }
    free(by_version);
    PQclear(r);
    free(w[i].recs);
  }
  PQfinish(pg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_appends_across_pg_restart),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
