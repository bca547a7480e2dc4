/* bt_pg_listener_t against the stack's real Postgres: notifications on two channels (one
 * needing quotes) arrive on the loop with their payloads; after its backend is terminated the
 * listener reconnects, LISTENs again, asks its owner for a catch-up, and receives again. */
#include "log.h"
#include "pg_listener.h"
#include "test_pg_util.h"

static int setup(void **state) { return pg_setup("pg_listener"); }

typedef struct {
  unsigned listening; /* on_listening calls */
  unsigned received;
  char channel[64], payload[64];
  int be_pid;
} seen_t;

static void on_notify(const char *channel, const char *payload, int be_pid, void *arg) {
  seen_t *s = arg;
  s->received++;
  snprintf(s->channel, sizeof s->channel, "%s", channel);
  snprintf(s->payload, sizeof s->payload, "%s", payload);
  s->be_pid = be_pid;
}

static void on_listening(void *arg) { ((seen_t *)arg)->listening++; }

typedef struct {
  seen_t *s;
  unsigned n;
} atleast_t;

static bool received(void *arg) { return ((atleast_t *)arg)->s->received >= ((atleast_t *)arg)->n; }
static bool listening(void *arg) { return ((atleast_t *)arg)->s->listening >= ((atleast_t *)arg)->n; }

/* NOTIFY from a connection of the test's own; returns that backend's pid. */
static int notify(const char *channel, const char *payload) {
  PGconn *c = pg_open();
  const char *v[] = {channel, payload};
  PGresult *r = PQexecParams(c, "SELECT pg_notify($1, $2), pg_backend_pid()", 2, NULL, v, NULL,
                             NULL, 0);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  int pid = atoi(PQgetvalue(r, 0, 1));
  PQclear(r);
  PQfinish(c);
  return pid;
}

static void test_listen_and_relisten(void **state) {
  char chan[64];
  snprintf(chan, sizeof chan, "bt_chan_%d", (int)getpid());
  const char *channels[] = {chan, "Odd \"quoted\" Channel"};
  seen_t s = {0};
  bt_pg_stats_t stats = {0};
  bt_pg_listener_t *l = NULL;
  assert_int_equal(bt_pg_listener_new(&l, &loop,
                                      &(bt_pg_listener_config_t){.dsn = dsn,
                                                                 .channels = channels,
                                                                 .nchannels = 2,
                                                                 .on_notify = on_notify,
                                                                 .on_listening = on_listening,
                                                                 .arg = &s,
                                                                 .reconnect_min_ms = 20,
                                                                 .reconnect_max_ms = 100,
                                                                 .stats = &stats}),
                   0);
  atleast_t one = {&s, 1}, two = {&s, 2};
  assert_true(run_until(listening, &one, 10000));
  assert_true(bt_pg_listener_ready(l));

  int pid = notify(chan, "hello");
  assert_true(run_until(received, &one, 10000));
  assert_string_equal(s.channel, chan);
  assert_string_equal(s.payload, "hello");
  assert_int_equal(s.be_pid, pid);
  notify("Odd \"quoted\" Channel", "second");
  assert_true(run_until(received, &two, 10000));
  assert_string_equal(s.channel, "Odd \"quoted\" Channel");
  assert_string_equal(s.payload, "second");

  /* The session goes away: the listener reconnects, listens again and asks for a catch-up. */
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = '%s'",
           appname);
  PGconn *c = pg_open();
  assert_int_equal(pg_scalar(c, sql), 1);
  PQfinish(c);
  assert_true(run_until(listening, &two, 15000));
  assert_true(bt_pg_listener_ready(l));
  assert_true(stats.reconnects.value >= 1);
  notify(chan, "after the reconnect");
  atleast_t three = {&s, 3};
  assert_true(run_until(received, &three, 10000));
  assert_string_equal(s.payload, "after the reconnect");

  bt_pg_listener_close(l);
  notify(chan, "after close"); /* not delivered: the listener is gone */
  loop_finish();
  assert_int_equal(s.received, 3);
}

/* Bad configurations are refused up front. */
static void test_config(void **state) {
  bt_pg_listener_t *l = NULL;
  const char *none[] = {""};
  seen_t s = {0};
  bt_pg_listener_config_t cfg = {.dsn = dsn, .channels = none, .nchannels = 1,
                                 .on_notify = on_notify, .on_listening = on_listening, .arg = &s};
  assert_int_equal(bt_pg_listener_new(&l, &loop, &cfg), BT_EINVAL); /* empty channel */
  cfg.nchannels = 0;
  assert_int_equal(bt_pg_listener_new(&l, &loop, &cfg), BT_EINVAL);
  loop_finish();
}

int main(void) {
  bt_log_init("test_pg_listener", BT_LOG_INFO);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_listen_and_relisten, setup, teardown),
      cmocka_unit_test_setup_teardown(test_config, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
