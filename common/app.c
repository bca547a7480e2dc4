/* Service lifecycle: STARTING -> RUNNING -> DRAINING -> CLOSING.
 * The drain ends when no component holds it any more; an idle handle checks that once per
 * loop iteration, so a component may release from inside any callback without re-entrancy. */
#include "app.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "log.h"

static const char *state_name(bt_app_state_t s) {
  switch (s) {
  case BT_APP_STARTING: return "starting";
  case BT_APP_RUNNING: return "running";
  case BT_APP_DRAINING: return "draining";
  case BT_APP_CLOSING: return "closing";
  }
  return "?";
}

static void set_state(bt_app_t *app, bt_app_state_t next) {
  bool legal = (app->state == BT_APP_STARTING && next == BT_APP_RUNNING) ||
               (app->state == BT_APP_STARTING && next == BT_APP_DRAINING) ||
               (app->state == BT_APP_RUNNING && next == BT_APP_DRAINING) ||
               (app->state == BT_APP_DRAINING && next == BT_APP_CLOSING);
  if (!legal)
    bt_fatal("app: illegal transition %s -> %s", state_name(app->state), state_name(next));
  app->state = next;
}

static void close_all(bt_app_t *app) {
  set_state(app, BT_APP_CLOSING);
  uv_timer_stop(&app->deadline);
  uv_idle_stop(&app->drain_check);
  for (unsigned i = app->nhooks; i-- > 0;)
    if (app->hooks[i].close)
      app->hooks[i].close(app, app->hooks[i].arg);
  uv_close((uv_handle_t *)&app->sigterm, NULL);
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->deadline, NULL);
  uv_close((uv_handle_t *)&app->drain_check, NULL);
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
  bt_log_error("shutdown deadline passed with work in flight", "{s:i, s:I}", "holds",
               (int)app->holds, "timeout_ms", (json_int_t)app->shutdown_timeout_ms);
  fflush(stdout);
  _exit(1);
}

void bt_app_shutdown(bt_app_t *app) {
  if (app->state != BT_APP_RUNNING && app->state != BT_APP_STARTING)
    return;
  bt_log_info("draining", "{s:I}", "timeout_ms", (json_int_t)app->shutdown_timeout_ms);
  set_state(app, BT_APP_DRAINING);
  uv_timer_start(&app->deadline, on_deadline, app->shutdown_timeout_ms, 0);
  for (unsigned i = 0; i < app->nhooks; i++)
    if (app->hooks[i].drain)
      app->hooks[i].drain(app, app->hooks[i].arg);
  uv_idle_start(&app->drain_check, on_drain_check);
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
  signal(SIGPIPE, SIG_IGN); /* writes to closed sockets report EPIPE instead */
  uv_signal_init(app->loop, &app->sigterm);
  uv_signal_init(app->loop, &app->sigint);
  app->sigterm.data = app->sigint.data = app;
  uv_signal_start(&app->sigterm, on_signal, SIGTERM);
  uv_signal_start(&app->sigint, on_signal, SIGINT);
  uv_timer_init(app->loop, &app->deadline);
  app->deadline.data = app;
  uv_idle_init(app->loop, &app->drain_check);
  app->drain_check.data = app;
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
  return ok;
}

void bt_app_hold(bt_app_t *app) { app->holds++; }

void bt_app_release(bt_app_t *app) {
  BT_ASSERT(app->holds > 0);
  app->holds--;
}

int bt_app_run(bt_app_t *app) {
  if (app->state == BT_APP_STARTING)
    set_state(app, BT_APP_RUNNING);
  uv_run(app->loop, UV_RUN_DEFAULT);
  return app->exit_code;
}

uint64_t bt_app_now_ms(bt_app_t *app) { return uv_now(app->loop); }
