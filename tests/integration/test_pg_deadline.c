/* The per-request answer deadline of bt_pg_pool_t against the stack's real Postgres: a query
 * that runs past it, and a backend frozen with SIGSTOP (a peer that holds its TCP connection
 * open but never answers), both end as "outcome unknown" (BT_ECONNRESET) within the deadline,
 * and the pool then serves requests on a new connection. */
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>

#include "log.h"
#include "test_pg_util.h"

static int setup(void **state) { return pg_setup("pg_deadline"); }

static bool both_done(void *arg) {
  outcome_t *o = arg;
  return o[0].done && o[1].done;
}

/* A pg_sleep far past the deadline, with a second request pipelined behind it on the same
 * connection: both are answered BT_ECONNRESET once the first is overdue. */
static void test_sleep_past_deadline(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1,
                                                   .pipeline_depth = 2,
                                                   .job_timeout_ms = 500,
                                                   .reconnect_min_ms = 20,
                                                   .reconnect_max_ms = 100,
                                                   .stats = &stats});
  assert_true(run_until(pool_ready, p, 10000));
  outcome_t o[2] = {{0}};
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_sleep(30)", 0, NULL, on_result, &o[0]), 0);
  assert_int_equal(bt_pg_pool_query(p, "SELECT 2", 0, NULL, on_result, &o[1]), 0);
  assert_true(run_until(both_done, o, 20000));
  assert_int_equal(o[0].err, BT_ECONNRESET);
  assert_int_equal(o[1].err, BT_ECONNRESET);
  /* Within the deadline plus scheduling slack, far below the sleep's 30 s. */
  assert_in_range(o[0].at_ms - t0, 450, 5000);
  if (!strstr(o[0].errmsg, "outcome unknown") || !strstr(o[0].errmsg, "no answer within 500 ms"))
    fail_msg("unexpected message: %s", o[0].errmsg);
  assert_int_equal(stats.deadlines.value, 1);

  /* The pool reconnects and serves the next request. */
  outcome_t next = {0};
  const char *v[] = {"5"};
  assert_int_equal(bt_pg_pool_query(p, "SELECT $1::int", 1, v, on_result, &next), 0);
  wait_outcome(&next, 10000);
  assert_int_equal(next.err, 0);
  assert_int_equal(next.first, 5);
  bt_pg_pool_close(p);
  loop_finish();
}

/* A backend stopped with SIGSTOP: the kernel still acknowledges the request, so neither TCP
 * nor keepalives notice anything; only the deadline frees the connection. */
static void test_stopped_backend(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1,
                                                   .job_timeout_ms = 1000,
                                                   .reconnect_min_ms = 20,
                                                   .reconnect_max_ms = 100,
                                                   .stats = &stats});
  outcome_t who = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_backend_pid()", 0, NULL, on_result, &who), 0);
  wait_outcome(&who, 10000);
  assert_int_equal(who.err, 0);
  pid_t pid = (pid_t)who.first;
  assert_true(pid > 0);

  assert_int_equal(kill(pid, SIGSTOP), 0);
  outcome_t frozen = {0};
  uint64_t t0 = bt_test_now_ms();
  int rc = bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &frozen);
  bool answered = rc == 0 && run_until(flag_set, &frozen.done, 15000);
  kill(pid, SIGCONT); /* before any assertion: a stopped backend would hang the stack's stop */
  assert_int_equal(rc, 0);
  assert_true(answered);
  assert_int_equal(frozen.err, BT_ECONNRESET);
  assert_in_range(frozen.at_ms - t0, 950, 6000);
  assert_int_equal(stats.deadlines.value, 1);

  /* Recovered: a new backend answers. */
  outcome_t after = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_backend_pid()", 0, NULL, on_result, &after), 0);
  wait_outcome(&after, 10000);
  assert_int_equal(after.err, 0);
  assert_int_not_equal(after.first, (long long)pid);
  bt_pg_pool_close(p);
  loop_finish();
}

/* A request that answers in time is untouched by the deadline, even when the deadline is
 * shorter than the connection's life: the timer follows each request, not the connection. */
static void test_in_time(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p =
      pool_new((bt_pg_pool_config_t){.size = 1, .job_timeout_ms = 400, .stats = &stats});
  for (int i = 0; i < 5; i++) {
    outcome_t o = {0};
    assert_int_equal(bt_pg_pool_query(p, "SELECT pg_sleep(0.2)", 0, NULL, on_result, &o), 0);
    wait_outcome(&o, 10000);
    assert_int_equal(o.err, 0);
  }
  assert_int_equal(stats.deadlines.value, 0);
  assert_int_equal(stats.reconnects.value, 0);
  bt_pg_pool_close(p);
  loop_finish();
}

/* The TCP options of this process's socket to the stack's Postgres port (the pool's only
 * connection): found through /proc/self/fd, since the pool does not expose its socket. */
typedef struct {
  int keepalive, idle, interval, count, user_timeout;
} tcp_opts_t;

static bool pool_socket_opts(int port, tcp_opts_t *o) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  struct dirent *e;
  bool found = false;
  while (!found && (e = readdir(d))) {
    int fd = atoi(e->d_name);
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    if (e->d_name[0] == '.' || getpeername(fd, (struct sockaddr *)&peer, &len) != 0 ||
        peer.ss_family != AF_INET || ntohs(((struct sockaddr_in *)&peer)->sin_port) != port)
      continue;
    socklen_t l = sizeof(int);
    found = getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &o->keepalive, &l) == 0 &&
            getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &o->idle, &l) == 0 &&
            getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &o->interval, &l) == 0 &&
            getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &o->count, &l) == 0 &&
            getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &o->user_timeout, &l) == 0;
  }
  closedir(d);
  return found;
}

static int stack_port(void) {
  char *why = NULL;
  int port = 0;
  PQconninfoOption *o = PQconninfoParse(bt_test_env("BATON_PG_DSN"), &why);
  assert_non_null(o);
  for (PQconninfoOption *x = o; x->keyword; x++)
    if (!strcmp(x->keyword, "port") && x->val)
      port = atoi(x->val);
  PQconninfoFree(o);
  assert_true(port > 0);
  return port;
}

/* Keepalives and tcp_user_timeout are on by default, so even an idle connection notices a
 * vanished peer; a DSN keyword overrides each. */
static void test_keepalive_defaults(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1});
  assert_true(run_until(pool_ready, p, 10000));
  tcp_opts_t o = {0};
  assert_true(pool_socket_opts(stack_port(), &o));
  assert_int_equal(o.keepalive, 1);
  assert_int_equal(o.idle, 10);
  assert_int_equal(o.interval, 5);
  assert_int_equal(o.count, 3);
  assert_int_equal(o.user_timeout, 20000);
  bt_pg_pool_close(p);
  loop_finish();

  char d[1200];
  bool uri = strncmp(dsn, "postgres", 8) == 0; /* dsn already carries a parameter */
  snprintf(d, sizeof d, uri ? "%s&keepalives_idle=33&tcp_user_timeout=7000"
                            : "%s keepalives_idle=33 tcp_user_timeout=7000",
           dsn);
  assert_int_equal(uv_loop_init(&loop), 0);
  p = pool_new((bt_pg_pool_config_t){.dsn = d, .size = 1});
  assert_true(run_until(pool_ready, p, 10000));
  assert_true(pool_socket_opts(stack_port(), &o));
  assert_int_equal(o.idle, 33);
  assert_int_equal(o.user_timeout, 7000);
  assert_int_equal(o.interval, 5); /* the defaults not overridden stay */
  bt_pg_pool_close(p);
  loop_finish();
}

int main(void) {
  bt_log_init("test_pg_deadline", BT_LOG_INFO);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sleep_past_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stopped_backend, setup, teardown),
      cmocka_unit_test_setup_teardown(test_in_time, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keepalive_defaults, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
