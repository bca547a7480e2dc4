/* Service lifecycle: STARTING -> RUNNING -> DRAINING -> CLOSING.
 * The drain ends when no component holds it any more; an idle handle checks that once per
 * loop iteration, so a component may release from inside any callback without re-entrancy. */
#include "app.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "fsm.h"
#include "log.h"

/* The lifecycle table: the only moves an app makes. bt_fsm_move() refuses any other with a
 * bug report and keeps baton_app_state{state=...} at 1 for the current state. */
static const char *const state_names[] = {"starting", "running", "draining", "closing"};
static const uint32_t legal_moves[] = {
    [BT_APP_STARTING] = BT_FSM_BIT(BT_APP_RUNNING) | BT_FSM_BIT(BT_APP_DRAINING),
    [BT_APP_RUNNING] = BT_FSM_BIT(BT_APP_DRAINING),
    [BT_APP_DRAINING] = BT_FSM_BIT(BT_APP_CLOSING),
    [BT_APP_CLOSING] = 0,
};
static bt_fsm_def_t app_fsm = {
    .kind = "app",
    .nstates = BT_ARRAY_LEN(state_names),
    .names = state_names,
    .legal = legal_moves,
};

static const char *state_name(bt_app_state_t s) { return bt_fsm_name(&app_fsm, s); }

static void set_state(bt_app_t *app, bt_app_state_t next) {
  bt_fsm_move(&app_fsm, app->state, next, app->svc);
  app->state = next;
}

/* A libuv call that fails during start-up or shutdown leaves the app unable to keep its
 * promises (no signals, no deadline): a bug or an exhausted process, reported as such. */
static void check_uv(int rc, const char *what) {
  if (rc != 0)
    bt_fatal("app: %s failed: %s", what, uv_strerror(rc));
}

/* Exit code once the deadline has passed: the code a component set with bt_app_fail(), which
 * says more than "too slow", else 1. */
static int deadline_exit_code(const bt_app_t *app) {
  return app->exit_code ? app->exit_code : 1;
}

/* The backstop for a close hook that blocks the loop thread itself (librdkafka's destroy waits
 * for its threads): the deadline timer cannot fire then, the alarm can. Only async-signal-safe
 * calls here, so the line is prepared when the alarm is armed. Lines still in the log buffer
 * are lost: flushing it would take a lock the blocked thread may hold. */
static char alarm_line[256];
static size_t alarm_line_len;
static volatile sig_atomic_t alarm_exit_code = 1;

static void on_alarm(int signum) {
  (void)signum;
  ssize_t w = write(STDOUT_FILENO, alarm_line, alarm_line_len);
  (void)w; /* nothing more can be done about a failed write here */
  _exit(alarm_exit_code);
}

static void arm_alarm(bt_app_t *app) {
  int n = snprintf(alarm_line, sizeof alarm_line,
                   "{\"level\":\"error\",\"msg\":\"shutdown deadline passed while the loop "
                   "was blocked\",\"svc\":\"%s\",\"timeout_ms\":%llu}\n",
                   app->svc, (unsigned long long)app->shutdown_timeout_ms);
  alarm_line_len = n > 0 ? ((size_t)n < sizeof alarm_line ? (size_t)n : sizeof alarm_line - 1) : 0;
  alarm_exit_code = deadline_exit_code(app);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGALRM, &sa, NULL) != 0)
    bt_fatal("app: sigaction(SIGALRM) failed: %s", strerror(errno));
  /* One second past the deadline: the loop's own timer is the normal way out and says more. */
  alarm((unsigned)((app->shutdown_timeout_ms + 999) / 1000 + 1));
}

static void close_all(bt_app_t *app) {
  set_state(app, BT_APP_CLOSING);
  uv_idle_stop(&app->drain_check);
  for (unsigned i = app->nhooks; i-- > 0;)
    if (app->hooks[i].close)
      app->hooks[i].close(app, app->hooks[i].arg);
  uv_close((uv_handle_t *)&app->sigterm, NULL);
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->drain_check, NULL);
  /* Some close hooks finish asynchronously (a consumer close, a DNS lookup uv_cancel cannot
   * stop), so the deadline stays armed until uv_run returns. Unreferenced, it does not keep
   * the loop alive by itself, yet still fires while anything else does. */
  uv_unref((uv_handle_t *)&app->deadline);
}

static void on_drain_check(uv_idle_t *h) {
  bt_app_t *app = h->data;
  if (app->state == BT_APP_DRAINING && app->holds == 0) {
    bt_log_info("drained", NULL);
    close_all(app);
  }
}

/* The deadline ends the process at once, as the kubelet's SIGKILL would a moment later.
 * Unwinding in-flight work through every component's close path would need each one to
 * cancel its callbacks safely; exiting is simpler and leaves durable state as a crash does,
 * which the services are built to survive. */
static void on_deadline(uv_timer_t *t) {
  bt_app_t *app = t->data;
  bt_log_error("shutdown deadline passed with work in flight", "{s:s, s:i, s:I}", "state",
               state_name(app->state), "holds", (int)app->holds, "timeout_ms",
               (json_int_t)app->shutdown_timeout_ms);
  bt_log_flush();
  _exit(deadline_exit_code(app));
}

void bt_app_shutdown(bt_app_t *app) {
  if (app->state != BT_APP_RUNNING && app->state != BT_APP_STARTING)
    return;
  bt_log_info("draining", "{s:I}", "timeout_ms", (json_int_t)app->shutdown_timeout_ms);
  set_state(app, BT_APP_DRAINING);
  check_uv(uv_timer_start(&app->deadline, on_deadline, app->shutdown_timeout_ms, 0),
           "uv_timer_start(deadline)");
  arm_alarm(app);
  for (unsigned i = 0; i < app->nhooks; i++)
    if (app->hooks[i].drain)
      app->hooks[i].drain(app, app->hooks[i].arg);
  check_uv(uv_idle_start(&app->drain_check, on_drain_check), "uv_idle_start(drain check)");
}

static void on_signal(uv_signal_t *s, int signum) {
  bt_app_t *app = s->data;
  bt_log_info("signal received", "{s:s}", "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  bt_app_shutdown(app);
}

void bt_app_init(bt_app_t *app, const char *svc, uint64_t shutdown_timeout_ms) {
  memset(app, 0, sizeof *app);
  app->loop = uv_default_loop();
  app->svc = svc;
  app->shutdown_timeout_ms = shutdown_timeout_ms;
  bt_fsm_register(&app_fsm, "baton_app_state", "1 for the service's lifecycle state.");
  bt_fsm_enter(&app_fsm, BT_APP_STARTING);
  signal(SIGPIPE, SIG_IGN); /* writes to closed sockets report EPIPE instead */
  check_uv(uv_signal_init(app->loop, &app->sigterm), "uv_signal_init(SIGTERM)");
  check_uv(uv_signal_init(app->loop, &app->sigint), "uv_signal_init(SIGINT)");
  app->sigterm.data = app->sigint.data = app;
  check_uv(uv_signal_start(&app->sigterm, on_signal, SIGTERM), "uv_signal_start(SIGTERM)");
  check_uv(uv_signal_start(&app->sigint, on_signal, SIGINT), "uv_signal_start(SIGINT)");
  check_uv(uv_timer_init(app->loop, &app->deadline), "uv_timer_init(deadline)");
  app->deadline.data = app;
  check_uv(uv_idle_init(app->loop, &app->drain_check), "uv_idle_init(drain check)");
  app->drain_check.data = app;
  check_uv(bt_log_attach(app->loop), "bt_log_attach");
}

void bt_app_on_shutdown(bt_app_t *app, bt_app_drain_cb drain, bt_app_close_cb close, void *arg) {
  BT_ASSERT(app->nhooks < BT_APP_MAX_HOOKS);
  app->hooks[app->nhooks].drain = drain;
  app->hooks[app->nhooks].close = close;
  app->hooks[app->nhooks].arg = arg;
  app->nhooks++;
}

void bt_app_add_dependency(bt_app_t *app, const char *name, bt_app_ready_cb ready, void *arg) {
  BT_ASSERT(app->ndeps < BT_APP_MAX_HOOKS);
  app->deps[app->ndeps].name = name;
  app->deps[app->ndeps].ready = ready;
  app->deps[app->ndeps].arg = arg;
  app->ndeps++;
}

bool bt_app_ready(bt_app_t *app, bt_buf_t *detail) {
  bool ok = app->state == BT_APP_RUNNING;
  size_t start = detail ? detail->len : 0;
  int rc = 0;
  if (detail)
    rc = bt_buf_appendf(detail, "{\"state\":\"%s\",\"deps\":{", state_name(app->state));
  for (unsigned i = 0; i < app->ndeps; i++) {
    bool up = app->deps[i].ready(app->deps[i].arg);
    ok = ok && up;
    if (detail && rc == 0)
      rc = bt_buf_appendf(detail, "%s\"%s\":%s", i ? "," : "", app->deps[i].name,
                          up ? "true" : "false");
  }
  if (detail && rc == 0)
    rc = bt_buf_appendf(detail, "},\"ready\":%s}", ok ? "true" : "false");
  if (detail && rc != 0) {
    /* A cut-off object is not JSON: answer the verdict alone, or nothing if even that does
     * not fit (the status code still says it). */
    detail->len = start;
    if (bt_buf_appendf(detail, "{\"ready\":%s}", ok ? "true" : "false") != 0)
      detail->len = start;
    if (detail->data)
      detail->data[detail->len] = '\0';
  }
  return ok;
}

void bt_app_hold(bt_app_t *app) { app->holds++; }

void bt_app_release(bt_app_t *app) {
  BT_ASSERT(app->holds > 0);
  app->holds--;
}

void bt_app_hold_while(bt_app_t *app, bool *held, bool want) {
  if (want == *held)
    return;
  *held = want;
  if (want)
    bt_app_hold(app);
  else
    bt_app_release(app);
}

void bt_app_fail(bt_app_t *app, int exit_code, const char *reason) {
  if (!app->failed) {
    app->failed = true;
    snprintf(app->fail_reason, sizeof app->fail_reason, "%s", reason ? reason : "failed");
    bt_log_error("fatal error: shutting down", "{s:s, s:i}", "reason", app->fail_reason,
                 "exit_code", exit_code);
  }
  if (app->exit_code == 0)
    app->exit_code = exit_code ? exit_code : 1;
  alarm_exit_code = app->exit_code; /* the alarm may be armed already */
  bt_app_shutdown(app);
}

bool bt_app_live(bt_app_t *app, bt_buf_t *detail) {
  if (detail) {
    json_t *o = app->failed ? json_pack("{s:s, s:s}", "status", "failed", "reason",
                                        app->fail_reason)
                            : json_pack("{s:s}", "status", "ok");
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (txt && bt_buf_append(detail, txt, strlen(txt)) != 0) {
      /* an answer without detail is still an answer */
    }
    free(txt);
    json_decref(o);
  }
  return !app->failed;
}

int bt_app_run(bt_app_t *app) {
  if (app->state == BT_APP_STARTING)
    set_state(app, BT_APP_RUNNING);
  uv_run(app->loop, UV_RUN_DEFAULT);
  /* uv_run returned: every close hook has finished (or uv_stop was called). The deadline and
   * its backstop go now, and so do the log timer and buffer; one more loop iteration runs the
   * close callbacks. */
  alarm(0);
  uv_timer_stop(&app->deadline);
  uv_close((uv_handle_t *)&app->deadline, NULL);
  bt_log_detach();
  uv_run(app->loop, UV_RUN_NOWAIT);
  bt_fsm_leave(&app_fsm, app->state);
  return app->exit_code;
}
