/* Helpers for the Redis client tests that need a Redis of their own (stopped, restarted or
 * started with a password): a redis-server child on a free loopback port, blocking hiredis
 * connections to check what the client did through an independent path, and a loop driver
 * so that each test reads top to bottom. Test code: everything here may block. */
#ifndef TEST_REDIS_COMMON_H
#define TEST_REDIS_COMMON_H

#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "app.h"
#include "redis_client.h"
#include "testsupport.h"

typedef struct test_redis {
  pid_t pid;
  int port;
  char log[512];
} test_redis_t;

/* A blocking connection to 127.0.0.1:port, authenticated when pass is non-NULL (as user when
 * that is non-NULL); NULL if it cannot connect. */
static inline redisContext *test_redis_direct(int port, const char *user, const char *pass) {
  struct timeval tv = {.tv_sec = 2};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (!c || c->err) {
    redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  if (pass) {
    redisReply *rep = user ? redisCommand(c, "AUTH %s %s", user, pass)
                           : redisCommand(c, "AUTH %s", pass);
    bool ok = rep && rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    if (!ok) {
      redisFree(c);
      return NULL;
    }
  }
  return c;
}

/* One command on a direct connection; fails the test when no reply comes. */
static inline redisReply *test_redis_cmd(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *rep = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (!rep)
    fail_msg("direct redis command \"%s\": %s", fmt, c->errstr);
  return rep;
}

/* Starts redis-server on port (0: a free one) with extra config arguments (NULL-terminated,
 * may be NULL), and waits until it answers, authenticating with pass if given. */
static inline void test_redis_start(test_redis_t *t, int port, const char *pass,
                             const char *const *extra) {
  t->port = port ? port : bt_test_free_port();
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", t->port);
  const char *argv[64] = {"redis-server", "--port", portstr, "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", "/tmp"};
  size_t n = 11;
  for (size_t i = 0; extra && extra[i]; i++) {
    assert_true(n < BT_ARRAY_LEN(argv) - 1);
    argv[n++] = extra[i];
  }
  argv[n] = NULL;
  const char *dir = getenv("BATON_BUILD_DIR");
  snprintf(t->log, sizeof t->log, "%s/redis-%d.log", dir ? dir : "/tmp", t->port);
  t->pid = bt_test_spawn(argv, NULL, t->log);
  uint64_t deadline = bt_test_now_ms() + 30000;
  for (;;) {
    redisContext *c = test_redis_direct(t->port, NULL, pass);
    redisReply *rep = c ? redisCommand(c, "PING") : NULL;
    bool up = rep && rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    redisFree(c);
    if (up)
      return;
    if (bt_test_now_ms() > deadline)
      fail_msg("redis-server on port %d did not come up (log %s)", t->port, t->log);
    usleep(50000);
  }
}

static inline void test_redis_stop(test_redis_t *t) {
  if (t->pid > 0) {
    kill(t->pid, SIGCONT); /* a stopped server cannot act on SIGTERM */
    bt_test_stop(t->pid, SIGTERM, 10000);
  }
  t->pid = 0;
}

/* Wakes the loop every 10 ms so that test_run_until re-checks its condition. */
static uv_timer_t test_wake;
static inline void on_test_wake(uv_timer_t *t) {}

static inline void test_loop_init(bt_app_t *app, const char *name) {
  bt_app_init(app, name, 10000);
  uv_timer_init(app->loop, &test_wake);
  uv_timer_start(&test_wake, on_test_wake, 10, 10);
}

/* Runs the loop until cond(arg) holds; false if timeout_ms passed first. */
static inline bool test_run_until(bt_app_t *app, bool (*cond)(void *), void *arg, uint64_t timeout_ms) {
  uint64_t deadline = bt_test_now_ms() + timeout_ms;
  while (!cond(arg)) {
    if (bt_test_now_ms() > deadline)
      return false;
    uv_run(app->loop, UV_RUN_ONCE);
  }
  return true;
}

/* Runs the loop for ms milliseconds, whatever happens. */
static inline void test_run_for(bt_app_t *app, uint64_t ms) {
  uint64_t end = bt_test_now_ms() + ms;
  while (bt_test_now_ms() < end)
    uv_run(app->loop, UV_RUN_ONCE);
}

static inline bool cond_ready(void *r) { return bt_redis_ready(r); }
static inline bool cond_flag(void *flag) { return *(bool *)flag; }

/* A client of the redis-server on port (cfg.url NULL: redis://127.0.0.1:port), waited for
 * until ready. */
static inline bt_redis_t *test_redis_client(bt_app_t *app, bt_redis_config_t cfg, int port) {
  char url[64], errstr[256];
  if (!cfg.url) {
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    cfg.url = url; /* copied by bt_redis_new */
  }
  bt_redis_t *r;
  if (bt_redis_new(&r, app, &cfg, errstr) != 0)
    fail_msg("%s", errstr);
  assert_true(test_run_until(app, cond_ready, r, 20000));
  return r;
}

/* Drains and closes the app (every client's close hook runs) and runs the loop dry, so
 * that ASan sees every client freed. */
/* Drains and closes everything through bt_app_run, which also disarms the shutdown deadline
 * and its alarm() backstop once the loop is done (a raw uv_run would leave both behind). */
static inline void test_loop_finish(bt_app_t *app) {
  bt_app_shutdown(app);
  uv_close((uv_handle_t *)&test_wake, NULL);
  (void)bt_app_run(app);
}

#endif
