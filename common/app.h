/* bt_app_t: a service process's lifecycle. It owns the one libuv loop, turns SIGTERM and
 * SIGINT into a drain, tracks the dependencies that make the service ready, and exits once
 * every component has finished its in-flight work or the shutdown deadline passes. */
#ifndef BT_APP_H
#define BT_APP_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"

typedef enum {
  BT_APP_STARTING, /* components are being created; not ready */
  BT_APP_RUNNING,  /* serving; ready when every dependency is */
  BT_APP_DRAINING, /* a signal arrived: no new work, in-flight work finishes */
  BT_APP_CLOSING,  /* drain done or deadline passed: handles are being closed */
} bt_app_state_t;

typedef struct bt_app bt_app_t;

/* Called when the drain starts: stop accepting new work. A component with in-flight work
 * calls bt_app_hold() here and bt_app_release() when that work is done. */
typedef void (*bt_app_drain_cb)(bt_app_t *app, void *arg);
/* Called once the drain is over: close every handle the component owns. */
typedef void (*bt_app_close_cb)(bt_app_t *app, void *arg);
/* Returns whether a dependency is usable now. */
typedef bool (*bt_app_ready_cb)(void *arg);

#define BT_APP_MAX_HOOKS 32

struct bt_app {
  uv_loop_t *loop;
  const char *svc;
  bt_app_state_t state;
  uint64_t shutdown_timeout_ms;
  int exit_code;       /* returned by bt_app_run; set by bt_app_fail() */
  bool failed;         /* bt_app_fail() was called: /healthz answers 503 */
  char fail_reason[256];
  unsigned holds; /* components still finishing in-flight work during the drain */
  uv_signal_t sigterm, sigint;
  uv_timer_t deadline;
  uv_idle_t drain_check;
  struct {
    bt_app_drain_cb drain;
    bt_app_close_cb close;
    void *arg;
  } hooks[BT_APP_MAX_HOOKS];
  unsigned nhooks;
  struct {
    const char *name;
    bt_app_ready_cb ready;
    void *arg;
  } deps[BT_APP_MAX_HOOKS];
  unsigned ndeps;
};

/* Initialises the app on uv_default_loop() and installs signal handlers. */
void bt_app_init(bt_app_t *app, const char *svc, uint64_t shutdown_timeout_ms);
/* Registers a component's drain and close hooks. Either may be NULL. Hooks run in
 * registration order for drain and reverse order for close. */
void bt_app_on_shutdown(bt_app_t *app, bt_app_drain_cb drain, bt_app_close_cb close, void *arg);
/* Registers a dependency that /readyz checks. `name` is borrowed. */
void bt_app_add_dependency(bt_app_t *app, const char *name, bt_app_ready_cb ready, void *arg);
/* Ready when running and every dependency is ready. If detail is non-NULL, appends a JSON
 * object {"state":..,"deps":{name:bool}} to it. */
bool bt_app_ready(bt_app_t *app, bt_buf_t *detail);
void bt_app_hold(bt_app_t *app);
void bt_app_release(bt_app_t *app);
/* The drain hold of a component with a condition: holds while `want` is true and releases
 * once it is not. `*held` (the component's own flag, initially false) remembers whether it
 * holds now, so calling this after every change of the condition is enough. */
void bt_app_hold_while(bt_app_t *app, bool *held, bool want);
/* Crash-only: a component hit an error it cannot recover from (a fenced Kafka producer, say).
 * Liveness turns false at once (/healthz 503 with `reason`), the exit code becomes
 * exit_code (kept if one was set before), and the drain starts, so the process ends and is
 * restarted instead of living on unable to work. reason is copied. */
void bt_app_fail(bt_app_t *app, int exit_code, const char *reason);
/* Liveness: false after bt_app_fail(). If detail is non-NULL, appends a JSON object
 * {"status":"ok"} or {"status":"failed","reason":..}. */
bool bt_app_live(bt_app_t *app, bt_buf_t *detail);
/* Starts the drain as SIGTERM would. */
void bt_app_shutdown(bt_app_t *app);
/* Marks the app running and runs the loop until shutdown completes: the drain is over and
 * every close hook has finished, asynchronous ones included. Returns exit_code (0 after a
 * clean drain, the bt_app_fail() code otherwise). The shutdown deadline covers the drain and
 * the close hooks alike: past it the process _exits at once with exit_code, or 1 if none was
 * set; an alarm() one second later is the backstop for a hook that blocks the loop thread. */
int bt_app_run(bt_app_t *app);

#endif
