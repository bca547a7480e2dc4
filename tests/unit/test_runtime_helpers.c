/* The small shared helpers every runtime object uses: the table-driven state check
 * (bt_fsm), the jittered backoff, cancellable name resolution and the app's drain hold and
 * crash-only failure. Fatal paths run in a forked child, which must die. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "app.h"
#include "backoff.h"
#include "fsm.h"
#include "metrics.h"
#include "resolver.h"
#include "testsupport.h"

enum { S_A, S_B, S_C, S_N };
static const char *const names[S_N] = {"a", "b", "c"};
static const uint32_t legal[S_N] = {
    [S_A] = BT_FSM_BIT(S_B),
    [S_B] = BT_FSM_BIT(S_A) | BT_FSM_BIT(S_C),
    [S_C] = 0,
};

static void test_fsm_gauges_follow_moves(void **state) {
  bt_metrics_reset();
  static bt_fsm_def_t def = {.kind = "thing", .nstates = S_N, .names = names, .legal = legal};
  bt_fsm_register(&def, "baton_test_things", "things per state");
  bt_fsm_register(&def, "baton_test_things", "things per state"); /* second call: no-op */
  bt_fsm_enter(&def, S_A);
  bt_fsm_enter(&def, S_A);
  bt_fsm_move(&def, S_A, S_B, "1");
  bt_fsm_move(&def, S_B, S_C, "1");
  assert_true(def.gauges[S_A].value == 1 && def.gauges[S_B].value == 0 &&
              def.gauges[S_C].value == 1);
  bt_fsm_leave(&def, S_C);
  assert_true(def.gauges[S_C].value == 0);
  assert_string_equal(bt_fsm_name(&def, S_B), "b");
  assert_string_equal(bt_fsm_name(&def, 99), "?");
  bt_buf_t out;
  bt_buf_init(&out, 0);
  assert_int_equal(bt_metrics_render(&out), 0);
  assert_non_null(strstr(out.data, "baton_test_things{state=\"a\"} 1"));
  assert_non_null(strstr(out.data, "baton_test_things{state=\"c\"} 0"));
  bt_buf_free(&out);
  bt_metrics_reset();
}

static void test_fsm_illegal_move_is_fatal(void **state) {
  static bt_fsm_def_t def = {.kind = "thing", .nstates = S_N, .names = names, .legal = legal};
  pid_t pid = fork();
  if (pid == 0) {
    close(1); /* keep the fatal log line out of the test output */
    bt_fsm_move(&def, S_C, S_A, "7"); /* C is final */
    _exit(0);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_false(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_backoff_grows_caps_and_resets(void **state) {
  bt_backoff_t b;
  bt_backoff_init(&b, 100, 1000, false);
  assert_int_equal(bt_backoff_next(&b), 100);
  assert_int_equal(bt_backoff_next(&b), 200);
  assert_int_equal(bt_backoff_next(&b), 400);
  assert_int_equal(bt_backoff_next(&b), 800);
  assert_int_equal(bt_backoff_next(&b), 1000);
  assert_int_equal(bt_backoff_next(&b), 1000);
  bt_backoff_reset(&b);
  assert_int_equal(bt_backoff_next(&b), 100);
}

static void test_backoff_jitter_spreads_within_bounds(void **state) {
  bt_backoff_t b;
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < 1000; i++) {
    bt_backoff_init(&b, 1000, 1000, true);
    uint64_t d = bt_backoff_next(&b);
    assert_true(d >= 500 && d <= 1000);
    lo = d < lo ? d : lo;
    hi = d > hi ? d : hi;
  }
  assert_true(hi - lo > 250); /* really random, not a constant */
}

typedef struct {
  int calls, status, n;
  char first[64];
} resolved_t;

static void on_resolved(int status, const char *errstr, const bt_addr_list_t *addrs, void *arg) {
  resolved_t *r = arg;
  r->calls++;
  r->status = status;
  r->n = (int)addrs->n;
  if (addrs->n)
    snprintf(r->first, sizeof r->first, "%s", addrs->addr[0]);
}

static void test_resolve_numeric_name_bad_and_cancel(void **state) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  resolved_t num = {0}, name = {0}, bad = {0}, cancelled = {0};
  bt_resolve_req_t *q;
  assert_int_equal(bt_resolve(&loop, "127.0.0.1", on_resolved, &num, &q), 0);
  assert_int_equal(num.calls, 0); /* never from inside the call */
  assert_int_equal(bt_resolve(&loop, "localhost", on_resolved, &name, &q), 0);
  assert_int_equal(bt_resolve(&loop, "no-such-host.invalid", on_resolved, &bad, &q), 0);
  assert_int_equal(bt_resolve(&loop, "::1", on_resolved, &cancelled, &q), 0);
  bt_resolve_cancel(q);
  assert_int_equal(bt_resolve(&loop, "", on_resolved, &bad, &q), BT_EINVAL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(num.calls, 1);
  assert_int_equal(num.status, 0);
  assert_string_equal(num.first, "127.0.0.1");
  assert_int_equal(name.calls, 1);
  assert_int_equal(name.status, 0);
  assert_true(name.n >= 1);
  assert_int_equal(bad.calls, 1);
  assert_true(bad.status < 0);
  assert_int_equal(cancelled.calls, 0);
  assert_int_equal(uv_loop_close(&loop), 0); /* nothing left behind */
}

static void test_app_hold_while_and_fail(void **state) {
  bt_app_t app;
  bt_app_init(&app, "test", 1000);
  bool held = false;
  bt_app_hold_while(&app, &held, true);
  bt_app_hold_while(&app, &held, true);
  assert_int_equal(app.holds, 1);
  bt_app_hold_while(&app, &held, false);
  assert_int_equal(app.holds, 0);
  assert_false(held);

  bt_buf_t d;
  bt_buf_init(&d, 0);
  assert_true(bt_app_live(&app, &d));
  assert_non_null(strstr(d.data, "\"ok\""));
  d.len = 0;
  bt_app_fail(&app, 3, "producer fenced");
  assert_false(bt_app_live(&app, &d));
  assert_non_null(strstr(d.data, "producer fenced"));
  assert_int_equal(app.exit_code, 3);
  assert_int_equal(app.state, BT_APP_DRAINING);
  bt_app_fail(&app, 4, "second"); /* the first cause and code stay */
  assert_int_equal(app.exit_code, 3);
  assert_string_equal(app.fail_reason, "producer fenced");
  bt_buf_free(&d);
  /* Nothing holds the drain: running the loop closes everything and returns the code. */
  assert_int_equal(bt_app_run(&app), 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fsm_gauges_follow_moves),
      cmocka_unit_test(test_fsm_illegal_move_is_fatal),
      cmocka_unit_test(test_backoff_grows_caps_and_resets),
      cmocka_unit_test(test_backoff_jitter_spreads_within_bounds),
      cmocka_unit_test(test_resolve_numeric_name_bad_and_cancel),
      cmocka_unit_test(test_app_hold_while_and_fail),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
