/* Table-driven configuration from BATON_* environment variables. One static table per
 * service drives parsing, validation, --help and the start-up log line (secrets masked). */
#ifndef BT_CONFIG_H
#define BT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"
#include "errors.h"

struct bt_http_limits; /* http_server.h; only a pointer is passed here */

typedef enum {
  BT_CFG_STRING,   /* char ** (points into the environment or the default; never freed) */
  BT_CFG_INT,      /* int64_t *, within [min, max] */
  BT_CFG_BOOL,     /* bool *: true/false/1/0/yes/no/on/off */
  BT_CFG_DURATION, /* int64_t * milliseconds: "250ms", "5s", "2m", "1h"; a bare number is ms */
  BT_CFG_SIZE,     /* int64_t * bytes: "512", "64KiB", "16MiB", "1GiB" (also K, M, G, KB, MB) */
  BT_CFG_ENUM,     /* char **, one of the '|'-separated words in `choices` */
} bt_config_type_t;

enum {
  BT_CFG_SECRET = 1 << 0,     /* masked entirely in logs */
  BT_CFG_SECRET_URL = 1 << 1, /* the password part of a URL/DSN is masked */
  BT_CFG_REQUIRED = 1 << 2,   /* must be set and non-empty */
};

typedef struct bt_config_var {
  const char *name; /* BATON_... */
  bt_config_type_t type;
  const char *def; /* default written as the user would write it; NULL means unset */
  int64_t min, max; /* bounds for INT, DURATION, SIZE (0,0 = unbounded) */
  unsigned flags;
  const char *choices; /* for ENUM */
  const char *help;
  void *target;
} bt_config_var_t;

/* Parses every variable of the table from the environment. On the first bad value returns
 * BT_EINVAL with a message naming the variable, the value and what it accepts. */
int bt_config_load(const bt_config_var_t *vars, size_t n, char *err, size_t errsz) BT_MUSTCHECK;
/* Parses one value of v's type into v's target (durations and sizes with their units); the
 * saga definitions reuse it for their durations. Returns 0 or BT_EINVAL with err naming the
 * variable, the value and what it accepts. */
int bt_config_parse_value(const bt_config_var_t *v, const char *value, char *err,
                          size_t errsz) BT_MUSTCHECK;
/* Prints a Markdown table of the variables: name, default, meaning. */
void bt_config_print_help(FILE *out, const bt_config_var_t *vars, size_t n);
/* Appends `in`, a list of Postgres DSNs (keyword=value or URI) or URLs separated by commas or
 * white space, to out with every secret replaced by "***": the values of the keywords libpq
 * treats as passwords (password, sslpassword, ...), URL passwords (scheme://user:***@host) and
 * password query parameters. A Postgres entry the masker cannot vouch for (it does not parse,
 * or a secret survives) is shown as "***" whole. Returns 0 or BT_ENOMEM. */
int bt_config_mask_secrets(const char *in, bt_buf_t *out) BT_MUSTCHECK;
/* Logs the effective configuration as one JSON line, secrets masked. */
void bt_config_log(const bt_config_var_t *vars, size_t n);

/* Settings every service shares: HTTP listener and limits, log level, shutdown deadline. */
typedef struct bt_common_config {
  char *http_host;
  int64_t http_port;
  char *log_level;
  int64_t log_buffer;
  int64_t shutdown_timeout_ms;
  int64_t max_body, max_header, header_timeout_ms, idle_timeout_ms, max_connections;
  int64_t write_timeout_ms, max_buffered;
} bt_common_config_t;

/* Expands to the table rows of bt_common_config_t fields for a service table; `cfg` is the
 * service's bt_common_config_t lvalue and `port` its default HTTP port as a string. */
#define BT_COMMON_CONFIG_VARS(cfg, port)                                                        \
  {"BATON_HTTP_HOST", BT_CFG_STRING, "0.0.0.0", 0, 0, 0, NULL,                                  \
   "Address the HTTP server binds.", &(cfg).http_host},                                         \
  {"BATON_HTTP_PORT", BT_CFG_INT, port, 0, 65535, 0, NULL,                                      \
   "HTTP port for the API, /healthz, /readyz and /metrics (0 picks a free port).",              \
   &(cfg).http_port},                                                                           \
  {"BATON_LOG_LEVEL", BT_CFG_ENUM, "info", 0, 0, 0, "debug|info|warn|error",                    \
   "Minimum level of the JSON log lines on stdout.", &(cfg).log_level},                         \
  {"BATON_LOG_BUFFER", BT_CFG_SIZE, "1MiB", 65536, (int64_t)1 << 30, 0, NULL,                   \
   "Log lines waiting to be written (flushed every 50 ms); lines beyond this are dropped and "  \
   "counted in baton_log_dropped_lines_total.",                                                 \
   &(cfg).log_buffer},                                                                          \
  {"BATON_SHUTDOWN_TIMEOUT", BT_CFG_DURATION, "10s", 100, 3600000, 0, NULL,                     \
   "After SIGTERM, in-flight work must finish within this; then the process exits 1.",          \
   &(cfg).shutdown_timeout_ms},                                                                 \
  {"BATON_HTTP_MAX_BODY", BT_CFG_SIZE, "1MiB", 1024, (int64_t)1 << 30, 0, NULL,                 \
   "Largest request body; larger ones are answered 413.", &(cfg).max_body},                     \
  {"BATON_HTTP_MAX_HEADER", BT_CFG_SIZE, "16KiB", 1024, 1 << 20, 0, NULL,                       \
   "Largest request line plus headers; larger ones are answered 431.", &(cfg).max_header},      \
  {"BATON_HTTP_HEADER_TIMEOUT", BT_CFG_DURATION, "10s", 10, 600000, 0, NULL,                    \
   "A request must arrive completely within this once begun; else 408.",                        \
   &(cfg).header_timeout_ms},                                                                   \
  {"BATON_HTTP_IDLE_TIMEOUT", BT_CFG_DURATION, "60s", 10, 3600000, 0, NULL,                     \
   "Keep-alive connections idle this long are answered 408 and closed.",                        \
   &(cfg).idle_timeout_ms},                                                                     \
  {"BATON_HTTP_MAX_CONNECTIONS", BT_CFG_INT, "4096", 1, 1000000, 0, NULL,                       \
   "Open connections beyond this are closed at once.", &(cfg).max_connections},                 \
  {"BATON_HTTP_WRITE_TIMEOUT", BT_CFG_DURATION, "5s", 10, 3600000, 0, NULL,                     \
   "Queued answers that make no progress this long (a client that stopped reading) reset the " \
   "connection.", &(cfg).write_timeout_ms},                                                     \
  {"BATON_HTTP_MAX_BUFFERED", BT_CFG_SIZE, "128MiB", 1 << 20, (int64_t)1 << 40, 0, NULL,        \
   "Process-wide bytes of HTTP input, bodies and queued answers; past it requests answer 503.", \
   &(cfg).max_buffered}

/* Fills HTTP limits (a bt_http_limits_t) from the common config. */
void bt_common_config_limits(const bt_common_config_t *cfg, struct bt_http_limits *limits);

/* Shared start-up: handles --help (prints the table, exits 0), loads the table (exits 2 with
 * the message on a bad value), initialises logging (level, buffer) from the common config,
 * logs the effective config and warns about unknown BATON_* variables. */
void bt_config_startup(const char *svc, int argc, char **argv, const bt_config_var_t *vars,
                       size_t n, const bt_common_config_t *common);

#endif
