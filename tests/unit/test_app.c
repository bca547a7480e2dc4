/* bt_app lifecycle tests. Each case runs an app in a forked child, because the deadline ends
 * the process, and checks how (and whether) the child ended: the exit code bt_app_run returns
 * or the deadline forces, with close hooks that finish late or never. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "app.h"
#include "log.h"
#include "testsupport.h"

/* Waits for the child; on timeout kills it and fails the test, since a hang is what the
 * deadline exists to prevent. Returns the exit code (128+signal when signalled). */
static int wait_child(pid_t pid, int timeout_ms) {
  uint64_t until = bt_test_now_ms() + (uint64_t)timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      break;
    if (bt_test_now_ms() > until) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      fail_msg("child %d still running after %d ms", (int)pid, timeout_ms);
    }
    usleep(10000);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

typedef void (*child_fn)(bt_app_t *app);

static char child_log[] = "/tmp/bt-test-app-XXXXXX";
static int child_log_fd = -1;

/* What the last child wrote on stdout (a static buffer). */
static const char *child_output(void) {
  static char out[8192];
  ssize_t n = pread(child_log_fd, out, sizeof out - 1, 0);
  out[n > 0 ? n : 0] = '\0';
  return out;
}

/* Runs fn in a child with an app whose deadline is deadline_ms, then shuts it down and exits
 * with bt_app_run's result. The child's stdout (its log) goes to child_log. */
static pid_t run_child(child_fn fn, uint64_t deadline_ms) {
  if (child_log_fd < 0) {
    child_log_fd = mkstemp(child_log);
    assert_true(child_log_fd >= 0);
    unlink(child_log);
  }
  assert_int_equal(ftruncate(child_log_fd, 0), 0);
  assert_int_equal(lseek(child_log_fd, 0, SEEK_SET), 0);
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(child_log_fd, STDOUT_FILENO);
    bt_log_init("test-app", BT_LOG_ERROR);
    static bt_app_t app;
    bt_app_init(&app, "test-app", deadline_ms);
    fn(&app);
    bt_app_shutdown(&app);
    _exit(bt_app_run(&app));
  }
  return pid;
}

/* --- a close hook that leaves a handle open forever ------------------------------------- */
static uv_timer_t forever_timer;
static void forever_tick(uv_timer_t *t) {}
static void close_leaves_handle_open(bt_app_t *app, void *arg) {
  uv_timer_init(app->loop, &forever_timer);
  uv_timer_start(&forever_timer, forever_tick, 10, 10);
}
static void setup_open_handle(bt_app_t *app) {
  bt_app_on_shutdown(app, NULL, close_leaves_handle_open, NULL);
}

static void test_close_hook_never_finishing_hits_deadline(void **state) {
  pid_t pid = run_child(setup_open_handle, 300);
  assert_int_equal(wait_child(pid, 30000), 1);
  /* The loop's deadline ended it, not the alarm backstop a second later. */
  assert_non_null(strstr(child_output(), "shutdown deadline passed with work in flight"));
}

/* --- a close hook waiting on a lookup uv_cancel cannot stop (a busy threadpool job) ------ */
static uv_work_t stuck_work;
static void stuck_work_cb(uv_work_t *w) { sleep(60); }
static void stuck_after_cb(uv_work_t *w, int status) {}
static void close_waits_on_work(bt_app_t *app, void *arg) {
  assert_int_equal(uv_queue_work(app->loop, &stuck_work, stuck_work_cb, stuck_after_cb), 0);
}
static void setup_stuck_work(bt_app_t *app) {
  bt_app_on_shutdown(app, NULL, close_waits_on_work, NULL);
}

static void test_close_hook_with_pending_work_hits_deadline(void **state) {
  pid_t pid = run_child(setup_stuck_work, 300);
  assert_int_equal(wait_child(pid, 30000), 1);
  assert_non_null(strstr(child_output(), "shutdown deadline passed with work in flight"));
}

/* --- an asynchronous close hook that does finish: clean exit, deadline not hit ----------- */
static uv_timer_t late_timer;
static void late_fire(uv_timer_t *t) { uv_close((uv_handle_t *)t, NULL); }
static void close_finishes_late(bt_app_t *app, void *arg) {
  uv_timer_init(app->loop, &late_timer);
  uv_timer_start(&late_timer, late_fire, 50, 0);
}
static void setup_late_close(bt_app_t *app) {
  bt_app_on_shutdown(app, NULL, close_finishes_late, NULL);
}

static void test_async_close_hook_finishing_exits_clean(void **state) {
  /* A deadline far beyond the hook's 50 ms: the exit code shows which ended the process. */
  pid_t pid = run_child(setup_late_close, 20000);
  assert_int_equal(wait_child(pid, 30000), 0);
}

/* --- exit codes --------------------------------------------------------------------------- */
static void setup_fail(bt_app_t *app) { bt_app_fail(app, 7, "fenced"); }

static void test_run_returns_fail_exit_code(void **state) {
  pid_t pid = run_child(setup_fail, 20000);
  assert_int_equal(wait_child(pid, 30000), 7);
}

static void setup_hold_forever(bt_app_t *app) { bt_app_hold(app); }

static void test_drain_past_deadline_exits_1(void **state) {
  pid_t pid = run_child(setup_hold_forever, 300);
  assert_int_equal(wait_child(pid, 30000), 1);
}

static void setup_fail_and_hold(bt_app_t *app) {
  bt_app_hold(app);
  bt_app_fail(app, 5, "fenced");
}

static void test_deadline_keeps_fail_exit_code(void **state) {
  pid_t pid = run_child(setup_fail_and_hold, 300);
  assert_int_equal(wait_child(pid, 30000), 5);
}

/* --- a close hook that blocks the loop thread: only the alarm backstop can end it -------- */
static void close_blocks(bt_app_t *app, void *arg) { sleep(60); }
static void setup_blocking_close(bt_app_t *app) {
  bt_app_on_shutdown(app, NULL, close_blocks, NULL);
}

static void test_blocking_close_hook_ends_by_alarm(void **state) {
  pid_t pid = run_child(setup_blocking_close, 200);
  assert_int_equal(wait_child(pid, 30000), 1);
  assert_non_null(strstr(child_output(), "while the loop was blocked"));
}

/* --- readiness detail stays JSON when the buffer is too small ---------------------------- */
static bool dep_up(void *arg) { return true; }

static void test_ready_detail_is_json_even_when_cut(void **state) {
  bt_app_t app;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    bt_log_init("test-app", BT_LOG_ERROR);
    bt_app_init(&app, "test-app", 1000);
    static const char *names[] = {"a-dependency-with-a-long-name-0", "a-dependency-with-a-long-name-1",
                                  "a-dependency-with-a-long-name-2", "a-dependency-with-a-long-name-3"};
    for (int i = 0; i < 4; i++)
      bt_app_add_dependency(&app, names[i], dep_up, NULL);
    bt_buf_t b;
    bt_buf_init(&b, 64); /* too small for the full detail */
    bt_app_ready(&app, &b);
    json_error_t e;
    json_t *j = json_loadb(b.data ? b.data : "", b.len, 0, &e);
    int ok = j && json_is_boolean(json_object_get(j, "ready"));
    json_decref(j);
    bt_buf_free(&b);
    _exit(ok ? 0 : 9);
  }
  assert_int_equal(wait_child(pid, 30000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_close_hook_never_finishing_hits_deadline),
      cmocka_unit_test(test_close_hook_with_pending_work_hits_deadline),
      cmocka_unit_test(test_async_close_hook_finishing_exits_clean),
      cmocka_unit_test(test_run_returns_fail_exit_code),
      cmocka_unit_test(test_drain_past_deadline_exits_1),
      cmocka_unit_test(test_deadline_keeps_fail_exit_code),
      cmocka_unit_test(test_blocking_close_hook_ends_by_alarm),
      cmocka_unit_test(test_ready_detail_is_json_even_when_cut),
  };
  return cmocka_run_group_tests_name("app", tests, NULL, NULL);
}
