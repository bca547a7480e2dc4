/* Bearer-token authentication for /v1 routes. Tokens come from BATON_API_TOKENS and/or a
 * file (a mounted Secret), and are compared in constant time so response timing does not
 * reveal how much of a guess was right. */
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "errors.h"
#include "log.h"

#define MAX_TOKENS 64
#define MAX_TOKEN_LEN 512
#define TOKENS_FILE_MAX 65536 /* bytes; a larger file is refused, never cut */

struct bt_auth {
  char *tokens[MAX_TOKENS];
  unsigned ntokens;
};

/* Adds the tokens of `list`, split at any of `seps` and trimmed. With `comments`, an entry
 * whose first non-blank character is '#' is a comment (a token file is a file people edit). */
static int add_tokens(bt_auth_t *a, const char *list, const char *seps, bool comments,
                      const char *origin) {
  char *copy = strdup(list), *save = NULL;
  if (!copy)
    return BT_ENOMEM;
  for (char *t = strtok_r(copy, seps, &save); t; t = strtok_r(NULL, seps, &save)) {
    while (*t == ' ' || *t == '\t')
      t++;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t' || t[len - 1] == '\r'))
      t[--len] = '\0';
    if (len == 0 || (comments && t[0] == '#'))
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

static const char *auth_hook(const bt_http_req_t *req, void *arg);

static void auth_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_auth_t *a = arg;
  for (unsigned i = 0; i < a->ntokens; i++)
    free(a->tokens[i]);
  free(a);
}

/* Reads the tokens of both sources into a. */
static int load_tokens(bt_auth_t *a, const char *tokens, const char *tokens_file) {
  int rc = 0;
  if (tokens)
    rc = add_tokens(a, tokens, ",", false, "BATON_API_TOKENS");
  if (rc == 0 && tokens_file) {
    FILE *f = fopen(tokens_file, "r");
    if (!f) {
      bt_log_error("cannot read BATON_API_TOKENS_FILE", "{s:s, s:s}", "file",
                   tokens_file, "error", strerror(errno));
      return BT_EINVAL;
    }
    /* One byte more than allowed is read, so that a file over the limit is told from one
     * exactly at it: cutting it would silently drop (or, worse, truncate) a token. */
    char *buf = malloc(TOKENS_FILE_MAX + 2);
    if (!buf) {
      fclose(f);
      return BT_ENOMEM;
    }
    size_t n = fread(buf, 1, TOKENS_FILE_MAX + 1, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || n > TOKENS_FILE_MAX) {
      bt_log_error("cannot read BATON_API_TOKENS_FILE", "{s:s, s:s}", "file",
                   tokens_file, "error",
                   failed ? "read error" : "the file is larger than 65536 bytes");
      free(buf);
      return BT_EINVAL;
    }
    buf[n] = '\0';
    rc = add_tokens(a, buf, "\n", true, "BATON_API_TOKENS_FILE");
    free(buf);
  }
  if (rc == 0 && (tokens || tokens_file) && a->ntokens == 0) {
    bt_log_error("API tokens are configured but none was found", NULL);
    return BT_EINVAL;
  }
  return rc;
}

bt_auth_t *bt_auth_start(bt_app_t *app, bt_http_server_t *http, const char *tokens,
                         const char *tokens_file) {
  bt_auth_t *a = calloc(1, sizeof *a);
  if (!a)
    return NULL;
  bt_app_on_shutdown(app, NULL, auth_close, a);
  if (load_tokens(a, tokens, tokens_file) != 0)
    return NULL; /* freed by the shutdown hook */
  bt_http_server_set_auth(http, auth_hook, a);
  bt_log_info("authentication", "{s:b, s:i}", "enabled", a->ntokens > 0, "tokens", (int)a->ntokens);
  return a;
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

/* NULL when the request carries a valid token (or none is configured), else why not. */
static const char *check_token(const bt_auth_t *a, const bt_http_req_t *req) {
  if (a->ntokens == 0)
    return NULL;
  const char *h = bt_http_req_header(req, "authorization");
  if (h && strncasecmp(h, "Bearer ", 7) == 0) {
    const char *tok = h + 7;
    size_t len = strlen(tok);
    bool ok = false;
    for (unsigned i = 0; i < a->ntokens; i++) /* no early exit: every token is compared */
      ok |= ct_equal(tok, len, a->tokens[i], strlen(a->tokens[i]));
    if (ok)
      return NULL;
  }
  return h ? "the bearer token is not valid" : "missing Authorization: Bearer <token>";
}

/* The server's hook for routes added with bt_http_server_route_auth: runs when the headers
 * are complete, so an unauthenticated client is refused before its body is read. */
static const char *auth_hook(const bt_http_req_t *req, void *arg) {
  return check_token(arg, req);
}

bool bt_auth_check(const bt_auth_t *a, bt_http_req_t *req) {
  const char *why = check_token(a, req);
  if (!why)
    return true;
  bt_http_req_add_header(req, "WWW-Authenticate", "Bearer");
  bt_http_respond_error(req, 401, "unauthorized", "%s", why);
  return false;
}
