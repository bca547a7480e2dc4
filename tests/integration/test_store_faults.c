/* The event store when things go wrong: a full append queue answers 429 with Retry-After and
 * writes nothing for it; an append that Postgres refuses inside a group commit fails alone
 * while its group neighbours, retried one by one, are all stored. Requests are written to many
 * open connections at once so that they arrive in the same loop iteration of the broker. */
#include <sys/socket.h>

#include "test_store_util.h"

enum { BURST = 40 };

typedef struct burst {
  int fd[BURST];
  int status[BURST];
  char retry_after[BURST][16];
  char stream[BURST][160];
  char error[BURST][64];
} burst_t;

/* Connects every socket first, then writes one append on each, then reads every answer. */
static void burst_run(const store_broker_t *br, burst_t *b, int n, const char *const *ids) {
  for (int i = 0; i < n; i++) {
    b->fd[i] = bt_test_connect("127.0.0.1", br->port);
    assert_true(b->fd[i] >= 0);
  }
  for (int i = 0; i < n; i++) {
    char *body = store_append_body("\"no_stream\"", ids ? ids[i] : "burst", i, 1);
    char req[2048];
    int len = snprintf(req, sizeof req,
                       "POST /v1/streams/%s/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                       b->stream[i], strlen(body), body);
    free(body);
    assert_int_equal(send(b->fd[i], req, (size_t)len, MSG_NOSIGNAL), len);
  }
  for (int i = 0; i < n; i++) {
    char resp[8192];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof resp - 1 && (r = recv(b->fd[i], resp + got, sizeof resp - 1 - got, 0)) > 0)
      got += (size_t)r;
    resp[got] = '\0';
    close(b->fd[i]);
    b->status[i] = 0;
    sscanf(resp, "HTTP/1.1 %d", &b->status[i]);
    const char *ra = strcasestr(resp, "\r\nRetry-After: ");
    b->retry_after[i][0] = '\0';
    if (ra)
      sscanf(ra + 15, "%15[0-9]", b->retry_after[i]);
    const char *body = strstr(resp, "\r\n\r\n");
    json_t *doc = body ? json_loads(body + 4, 0, NULL) : NULL;
    snprintf(b->error[i], sizeof b->error[i], "%s", jstr(doc, "error"));
    json_decref(doc);
  }
}

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

/* ---- 429 -------------------------------------------------------------------------------- */

static void test_queue_full_answers_429(void **state) {
  store_broker_t br;
  const char *extra[] = {"BATON_BROKER_APPEND_QUEUE=1", "BATON_BROKER_RETRY_AFTER=2", NULL};
  store_broker_start(&br, "it_store_faults_429", extra);
  burst_t *b = calloc(1, sizeof *b);
  for (int i = 0; i < BURST; i++)
    snprintf(b->stream[i], sizeof b->stream[i], "it-q-%s-%d", store_run_id(), i);
  burst_run(&br, b, BURST, NULL);
  int created = 0, refused = 0;
  for (int i = 0; i < BURST; i++) {
    if (b->status[i] == 201) {
      created++;
    } else {
      assert_int_equal(b->status[i], 429);
      assert_string_equal(b->error[i], "append_queue_full");
      assert_string_equal(b->retry_after[i], "2");
      refused++;
    }
  }
  print_message("queue of 1: %d appends answered 201, %d answered 429\n", created, refused);
  assert_true(created >= 1);
  assert_true(refused >= 1);
  /* The oracle: exactly the 201s were written. */
  PGconn *pg = store_pg();
  for (int i = 0; i < BURST; i++)
    assert_int_equal(store_count_stream(pg, b->stream[i]), b->status[i] == 201 ? 1 : 0);
  PQfinish(pg);
  assert_true(store_metric(&br, "baton_broker_append_rejected_total{reason=\"busy\"}") >= refused);
  free(b);
  store_broker_stop(&br);
}

/* ---- one bad append in a group ---------------------------------------------------------- */

static char constraint[64], poison[96];

static void poison_sql(const char *fmt) {
  char sql[512];
  snprintf(sql, sizeof sql, fmt, constraint, poison);
  PGconn *pg = store_pg();
  PQclear(store_sql(pg, sql, 0, NULL));
  PQfinish(pg);
}

static int drop_poison(void **state) {
  if (constraint[0])
    poison_sql("ALTER TABLE baton.events DROP CONSTRAINT IF EXISTS %s -- %s");
  return 0;
}

static void test_bad_append_fails_alone(void **state) {
  /* A constraint that refuses one event id only, so Postgres fails the transaction that
   * carries it: what an unexpected SQL error in one append looks like to its group. NOT VALID
   * skips checking the rows other tests wrote. */
  snprintf(constraint, sizeof constraint, "it_store_poison_%d", (int)getpid());
  snprintf(poison, sizeof poison, "poison-%s", store_run_id());
  poison_sql("ALTER TABLE baton.events ADD CONSTRAINT %s CHECK (id NOT LIKE '%s-%%') NOT VALID");

  store_broker_t br;
  store_broker_start(&br, "it_store_faults_poison", NULL);
  double splits0 = store_metric(&br, "baton_broker_append_group_splits_total");
  burst_t *b = calloc(1, sizeof *b);
  const char *ids[BURST];
  enum { BAD = 17 };
  for (int i = 0; i < BURST; i++) {
    snprintf(b->stream[i], sizeof b->stream[i], "it-poison-%s-%d", store_run_id(), i);
    ids[i] = i == BAD ? poison : "good"; /* event ids are "<prefix>-<i>" */
  }
  burst_run(&br, b, BURST, ids);
  PGconn *pg = store_pg();
  for (int i = 0; i < BURST; i++) {
    if (i == BAD) {
      assert_int_equal(b->status[i], 500);
      assert_string_equal(b->error[i], "store_error");
      assert_int_equal(store_count_stream(pg, b->stream[i]), 0);
    } else {
      assert_int_equal(b->status[i], 201);
      assert_int_equal(store_count_stream(pg, b->stream[i]), 1);
    }
  }
  PQfinish(pg);
  /* The bad append shared a transaction with others, which was split. */
  assert_true(store_metric(&br, "baton_broker_append_group_splits_total") > splits0);
  free(b);
  store_broker_stop(&br);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_full_answers_429),
      cmocka_unit_test_teardown(test_bad_append_fails_alone, drop_poison),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
