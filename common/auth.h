/* bt_auth: bearer-token authentication for a service's /v1 routes. Tokens come from a
 * comma-separated list (BATON_API_TOKENS) and/or a file with one token per line (a mounted
 * Secret). With no token configured, every request is allowed. Routes added with
 * bt_http_server_route_auth are checked at headers-complete, before any body is read; a
 * handler can check again with bt_auth_check. */
#ifndef BT_AUTH_H
#define BT_AUTH_H

#include <stdbool.h>

#include "app.h"
#include "http_server.h"

typedef struct bt_auth bt_auth_t;

/* The table rows of the two token settings, for a service's config table (config.h);
 * `tokens` and `tokens_file` are the char * lvalues they fill. */
#define BT_AUTH_CONFIG_VARS(tokens, tokens_file)                                                \
  {"BATON_API_TOKENS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL,                          \
   "Comma-separated bearer tokens; when set (or a tokens file is), every /v1 route needs "      \
   "Authorization: Bearer <token>.",                                                            \
   &(tokens)},                                                                                  \
  {"BATON_API_TOKENS_FILE", BT_CFG_STRING, NULL, 0, 0, 0, NULL,                                 \
   "File with one bearer token per line (a mounted Secret); read at start.", &(tokens_file)}

/* Loads the tokens, installs the header-time hook on http, and frees itself at shutdown.
 * tokens and tokens_file may be NULL. Returns NULL (having logged why) when the list or the
 * file is invalid: a token over 512 bytes, more than 64 tokens, an unreadable or oversized
 * file, or a source that is set but holds no token. */
bt_auth_t *bt_auth_start(bt_app_t *app, bt_http_server_t *http, const char *tokens,
                         const char *tokens_file);

/* True when req carries a valid token or none is configured; otherwise answers 401 with
 * WWW-Authenticate: Bearer and returns false (the request is then answered). */
bool bt_auth_check(const bt_auth_t *a, bt_http_req_t *req);

#endif
