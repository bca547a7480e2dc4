/* Bearer-token authentication for /v1 routes. Tokens come from BATON_API_TOKENS and/or a
 * file (a mounted Secret), and are compared in constant time so response timing does not
 * reveal how much of a guess was right. */
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "broker.h"
#include "log.h"

#define MAX_TOKENS 64
#define MAX_TOKEN_LEN 512

struct broker_auth {
  char *tokens[MAX_TOKENS];
  unsigned ntokens;
};

static int add_tokens(broker_auth_t *a, const char *list, const char *seps, const char *origin) {
  char *copy = strdup(list), *save = NULL;
  if (!copy)
    return BT_ENOMEM;
  for (char *t = strtok_r(copy, seps, &save); t; t = strtok_r(NULL, seps, &save)) {
    while (*t == ' ' || *t == '\t')
      t++;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t' || t[len - 1] == '\r'))
      t[--len] = '\0';
    if (len == 0)
      continue;
    if (len > MAX_TOKEN_LEN || a->ntokens == MAX_TOKENS) {
      bt_log_error("invalid API tokens", "{s:s, s:s}", "source", origin, "error",
                   len > MAX_TOKEN_LEN ? "a token is longer than 512 bytes" : "more than 64 tokens");
      free(copy);
      return BT_EINVAL;
    }
    a->tokens[a->ntokens++] = strdup(t);
  }
  free(copy);
  return 0;
}

static void auth_close(bt_app_t *app, void *arg) {
  broker_auth_t *a = arg;
  for (unsigned i = 0; i < a->ntokens; i++)
    free(a->tokens[i]);
  free(a);
}

int broker_auth_start(broker_t *b) {
  broker_auth_t *a = calloc(1, sizeof *a);
  if (!a)
    return BT_ENOMEM;
  b->auth = a;
  bt_app_on_shutdown(&b->app, NULL, auth_close, a);
  int rc = 0;
  if (b->cfg.api_tokens)
    rc = add_tokens(a, b->cfg.api_tokens, ",", "BATON_API_TOKENS");
  if (rc == 0 && b->cfg.api_tokens_file) {
    FILE *f = fopen(b->cfg.api_tokens_file, "r");
    if (!f) {
      bt_log_error("cannot read BATON_API_TOKENS_FILE", "{s:s, s:s}", "file",
                   b->cfg.api_tokens_file, "error", strerror(errno));
      return BT_EINVAL;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    rc = add_tokens(a, buf, "\n", "BATON_API_TOKENS_FILE");
  }
  if (rc == 0 && (b->cfg.api_tokens || b->cfg.api_tokens_file) && a->ntokens == 0) {
    bt_log_error("API tokens are configured but none was found", NULL);
    return BT_EINVAL;
  }
  bt_log_info("authentication", "{s:b, s:i}", "enabled", a->ntokens > 0, "tokens", (int)a->ntokens);
  return rc;
}

/* Compares every byte of both strings (padded to the longer), so the time taken depends only
 * on the lengths, never on where the first difference is. */
static bool ct_equal(const char *a, size_t alen, const char *b, size_t blen) {
  size_t n = alen > blen ? alen : blen;
  unsigned char diff = (unsigned char)(alen != blen);
  for (size_t i = 0; i < n; i++) {
    unsigned char x = i < alen ? (unsigned char)a[i] : 0, y = i < blen ? (unsigned char)b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

bool broker_authorized(broker_t *b, bt_http_req_t *req) {
  broker_auth_t *a = b->auth;
  if (a->ntokens == 0)
    return true;
  const char *h = bt_http_req_header(req, "authorization");
  if (h && strncasecmp(h, "Bearer ", 7) == 0) {
    const char *tok = h + 7;
    size_t len = strlen(tok);
    bool ok = false;
    for (unsigned i = 0; i < a->ntokens; i++) /* no early exit: every token is compared */
      ok |= ct_equal(tok, len, a->tokens[i], strlen(a->tokens[i]));
    if (ok)
      return true;
  }
  bt_http_req_add_header(req, "WWW-Authenticate", "Bearer");
  bt_http_respond_error(req, 401, "unauthorized",
                        h ? "the bearer token is not valid" : "missing Authorization: Bearer <token>");
  return false;
}
