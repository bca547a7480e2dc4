/* baton-broker: entry point. Parses the configuration, creates the runtime components the
 * broker needs, registers its routes and runs the loop until a signal drains it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "config.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"

typedef struct broker_config {
  bt_common_config_t common;
} broker_config_t;

static broker_config_t cfg;

static const bt_config_var_t broker_vars[] = {
    BT_COMMON_CONFIG_VARS(cfg.common, "8080"),
};

int main(int argc, char **argv) {
  bt_config_startup("baton-broker", argc, argv, broker_vars, BT_ARRAY_LEN(broker_vars),
                    &cfg.common);
  bt_metrics_register_process();

  bt_app_t app;
  bt_app_init(&app, "baton-broker", (uint64_t)cfg.common.shutdown_timeout_ms);

  bt_http_limits_t limits;
  bt_common_config_limits(&cfg.common, &limits);
  bt_http_server_t *http;
  char err[256];
  if (bt_http_server_start(&http, &app, cfg.common.http_host, (int)cfg.common.http_port, &limits,
                           err) != 0) {
    bt_log_error("cannot start the HTTP server", "{s:s}", "error", err);
    return 1;
  }
  bt_log_info("listening", "{s:s, s:i}", "host", cfg.common.http_host, "port",
              bt_http_server_port(http));
  int rc = bt_app_run(&app);
  bt_log_info("exiting", "{s:i}", "code", rc);
  return rc;
}
