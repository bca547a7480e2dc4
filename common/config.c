/* Parsing and validation of BATON_* variables against a service's table. A bad value stops
 * start-up with a message naming the variable, because a service that guesses is worse than
 * one that refuses to start. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_server.h"
#include "log.h"

extern char **environ;

static const char *type_hint(const bt_config_var_t *v) {
  switch (v->type) {
  case BT_CFG_STRING: return "a string";
  case BT_CFG_INT: return "an integer";
  case BT_CFG_BOOL: return "true or false";
  case BT_CFG_DURATION: return "a duration such as 250ms, 5s or 2m";
  case BT_CFG_SIZE: return "a size such as 65536, 64KiB or 16MiB";
  case BT_CFG_ENUM: return v->choices;
  }
  return "?";
}

/* Parses a decimal integer with an optional unit suffix from units[]; returns 0 or -1. */
typedef struct { const char *suffix; int64_t mult; } unit_t;

static int parse_with_units(const char *s, const unit_t *units, int64_t *out) {
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (end == s || errno == ERANGE || v < 0)
    return -1;
  while (*end == ' ')
    end++;
  if (*end == '\0') {
    *out = v;
    return 0;
  }
  for (const unit_t *u = units; u->suffix; u++) {
    if (strcasecmp(end, u->suffix) == 0) {
      if (v > INT64_MAX / u->mult)
        return -1;
      *out = v * u->mult;
      return 0;
    }
  }
  return -1;
}

static const unit_t duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {NULL, 0}};
static const unit_t size_units[] = {{"b", 1},          {"k", 1024},         {"kb", 1024},
                                    {"kib", 1024},     {"m", 1 << 20},      {"mb", 1 << 20},
                                    {"mib", 1 << 20},  {"g", 1 << 30},      {"gb", 1 << 30},
                                    {"gib", 1 << 30},  {NULL, 0}};

static bool enum_contains(const char *choices, const char *value) {
  size_t n = strlen(value);
  for (const char *p = choices; *p;) {
    size_t len = strcspn(p, "|");
    if (len == n && strncmp(p, value, n) == 0)
      return true;
    p += len + (p[len] == '|');
  }
  return false;
}

/* Parses one value into v->target; on a bad value writes a message naming the variable. */
int bt_config_parse_value(const bt_config_var_t *v, const char *value, char *err, size_t errsz) {
  int64_t num = 0;
  switch (v->type) {
  case BT_CFG_STRING:
    *(const char **)v->target = value;
    return 0;
  case BT_CFG_ENUM:
    if (!enum_contains(v->choices, value))
      goto bad;
    *(const char **)v->target = value;
    return 0;
  case BT_CFG_BOOL: {
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
      if (strcasecmp(value, yes[i]) == 0) {
        *(bool *)v->target = true;
        return 0;
      }
      if (strcasecmp(value, no[i]) == 0) {
        *(bool *)v->target = false;
        return 0;
      }
    }
    goto bad;
  }
  case BT_CFG_INT:
    if (parse_with_units(value, (unit_t[]){{NULL, 0}}, &num) != 0)
      goto bad;
    break;
  case BT_CFG_DURATION:
    if (parse_with_units(value, duration_units, &num) != 0)
      goto bad;
    break;
  case BT_CFG_SIZE:
    if (parse_with_units(value, size_units, &num) != 0)
      goto bad;
    break;
  }
  if ((v->min || v->max) && (num < v->min || num > v->max)) {
    snprintf(err, errsz, "%s=%s is out of range: it accepts %s from %lld to %lld%s", v->name,
             value, type_hint(v), (long long)v->min, (long long)v->max,
             v->type == BT_CFG_DURATION ? " ms" : v->type == BT_CFG_SIZE ? " bytes" : "");
    return BT_ERANGE;
  }
  *(int64_t *)v->target = num;
  return 0;
bad:
  snprintf(err, errsz, "%s=%s is not valid: it accepts %s", v->name, value, type_hint(v));
  return BT_EINVAL;
}

int bt_config_load(const bt_config_var_t *vars, size_t n, char *err, size_t errsz) {
  for (size_t i = 0; i < n; i++) {
    const bt_config_var_t *v = &vars[i];
    const char *value = getenv(v->name);
    bool from_env = value != NULL;
    if (!value)
      value = v->def;
    if ((v->flags & BT_CFG_REQUIRED) && (!value || !*value)) {
      snprintf(err, errsz, "%s is required: %s", v->name, v->help);
      return BT_EINVAL;
    }
    if (!value) {
      if (v->type == BT_CFG_STRING || v->type == BT_CFG_ENUM)
        *(const char **)v->target = NULL;
      continue;
    }
    int rc = bt_config_parse_value(v, value, err, errsz);
    if (rc != 0) {
      if (!from_env) /* a bad default is our bug, not the user's */
        bt_fatal("config: default of %s is invalid: %s", v->name, err);
      return rc;
    }
  }
  return 0;
}

void bt_config_print_help(FILE *out, const bt_config_var_t *vars, size_t n) {
  fprintf(out, "| variable | default | meaning |\n|---|---|---|\n");
  for (size_t i = 0; i < n; i++) {
    const bt_config_var_t *v = &vars[i];
    fprintf(out, "| `%s` | %s%s%s | %s%s |\n", v->name, v->def && *v->def ? "`" : "",
            v->def ? (*v->def ? v->def : "(empty)") : "(unset)", v->def && *v->def ? "`" : "",
            v->help, v->flags & BT_CFG_REQUIRED ? " Required." : "");
  }
}

/* ---- Masking secrets in connection strings ------------------------------------------------
 * A value flagged BT_CFG_SECRET_URL is a list of Postgres DSNs (keyword=value or URI form) or
 * URLs (redis://user:pass@host), separated by commas or white space. The masker walks it with
 * libpq's grammar (quotes, backslash escapes) and replaces the value of every keyword libpq
 * itself treats as a password (dispchar "*": password, sslpassword, ...) and every URL's
 * password. Each Postgres entry is then parsed again with PQconninfoParse: if any secret of
 * the masked text is not "***" (a form the walk did not foresee) or the entry does not parse,
 * the whole entry is shown as "***". A secret never reaches the log by a parse we got wrong. */

/* Whether libpq marks keyword (len bytes, not terminated) as a password. */
static bool pq_secret_keyword(const char *kw, size_t len) {
  static PQconninfoOption *all; /* every keyword libpq knows; kept for the process */
  if (!all)
    all = PQconninfoParse("", NULL);
  for (const PQconninfoOption *o = all; o && o->keyword; o++)
    if (o->dispchar && o->dispchar[0] == '*' && strlen(o->keyword) == len &&
        strncmp(o->keyword, kw, len) == 0)
      return true;
  /* Without libpq's table, the one keyword every client knows. */
  return !all && len == 8 && strncmp(kw, "password", 8) == 0;
}

/* Length of "scheme://" at p, or 0. */
static size_t scheme_len(const char *p) {
  size_t n = 0;
  if (!isalpha((unsigned char)p[0]))
    return 0;
  while (isalnum((unsigned char)p[n]) || p[n] == '+' || p[n] == '.' || p[n] == '-')
    n++;
  return strncmp(p + n, "://", 3) == 0 ? n + 3 : 0;
}

/* Length of "keyword =" at p (white space allowed around), or 0. */
static size_t keyword_eq_len(const char *p, size_t *kwlen) {
  size_t n = 0;
  while (isalnum((unsigned char)p[n]) || p[n] == '_')
    n++;
  if (n == 0)
    return 0;
  *kwlen = n;
  size_t e = n + strspn(p + n, " \t\n\r");
  return p[e] == '=' ? e + 1 : 0;
}

/* Whether an entry of the list starts at p (after a comma): a URL or keyword=. Otherwise the
 * comma belongs to the current value (a multi-host "host=a,b" or "postgres://a:1,b:2/db"). */
static bool at_entry_start(const char *p) {
  size_t kw;
  p += strspn(p, " \t\n\r");
  return *p == '\0' || *p == ',' || scheme_len(p) > 0 || keyword_eq_len(p, &kw) > 0;
}

/* End of a keyword's value at p: a quoted string or a word, both with backslash escapes, as
 * libpq reads them; an unquoted word also ends at a comma that starts a new entry. */
static const char *value_end(const char *p) {
  if (*p == '\'') {
    for (p++; *p && *p != '\''; p++)
      if (*p == '\\' && p[1])
        p++;
    return *p ? p + 1 : p;
  }
  for (; *p && !isspace((unsigned char)*p); p++) {
    if (*p == '\\' && p[1])
      p++;
    else if (*p == ',' && at_entry_start(p + 1))
      break;
  }
  return p;
}

static int put(bt_buf_t *o, const char *p, size_t n) { return bt_buf_append(o, p, n); }

static bool is_pg_url(const char *u) {
  return strncmp(u, "postgres://", 11) == 0 || strncmp(u, "postgresql://", 13) == 0;
}

/* Decodes %XX escapes of s[0..n) into out (at most outsz-1 bytes), for comparing keys. */
static void pct_decode(const char *s, size_t n, char *out, size_t outsz) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 1 < outsz; i++) {
    if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
        isxdigit((unsigned char)s[i + 2])) {
      char hex[3] = {s[i + 1], s[i + 2], '\0'};
      out[j++] = (char)strtol(hex, NULL, 16);
      i += 2;
    } else {
      out[j++] = s[i];
    }
  }
  out[j] = '\0';
}

/* Masks one URL of n bytes: the password of its user info and secret query parameters. */
static int mask_url(bt_buf_t *o, const char *u, size_t n, size_t slen) {
  bool pg = is_pg_url(u);
  const char *end = u + n, *auth = u + slen;
  const char *auth_end = auth;
  while (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#')
    auth_end++;
  const char *at = NULL;
  for (const char *q = auth; q < auth_end; q++)
    if (*q == '@')
      at = q;
  int rc = put(o, u, slen);
  const char *p = auth;
  if (at) {
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (colon)
      rc = rc ? rc : put(o, auth, (size_t)(colon - auth + 1));
    /* redis://secret@host: some clients read a lone user info as the password. */
    if (colon || !pg)
      rc = rc ? rc : put(o, "***", 3);
    else
      rc = rc ? rc : put(o, auth, (size_t)(at - auth));
    p = at;
  }
  const char *query = memchr(p, '?', (size_t)(end - p));
  if (!query)
    return rc ? rc : put(o, p, (size_t)(end - p));
  rc = rc ? rc : put(o, p, (size_t)(query + 1 - p));
  for (p = query + 1; p < end && rc == 0;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *pend = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(pend - p));
    char key[64];
    pct_decode(p, (size_t)((eq ? eq : pend) - p), key, sizeof key);
    if (eq && (pq_secret_keyword(key, strlen(key)) || strcmp(key, "password") == 0)) {
      rc = put(o, p, (size_t)(eq + 1 - p));
      rc = rc ? rc : put(o, "***", 3);
    } else {
      rc = put(o, p, (size_t)(pend - p));
    }
    if (amp && rc == 0)
      rc = put(o, "&", 1);
    p = amp ? amp + 1 : end;
  }
  return rc;
}

/* Checks the masked Postgres entry at o->data[from..]: it must parse, and every secret in it
 * must read "***"; otherwise the entry is replaced by "***". */
static int verify_pg_entry(bt_buf_t *o, size_t from) {
  if (o->len == from)
    return 0;
  char *text = strndup(o->data + from, o->len - from);
  if (!text)
    return BT_ENOMEM;
  bool ok = true;
  PQconninfoOption *opts = PQconninfoParse(text, NULL);
  ok = opts != NULL;
  for (PQconninfoOption *x = opts; x && x->keyword && ok; x++)
    if (x->val && x->dispchar && x->dispchar[0] == '*')
      ok = strcmp(x->val, "***") == 0;
  PQconninfoFree(opts);
  free(text);
  if (ok)
    return 0;
  o->len = from;
  return put(o, "***", 3);
}

int bt_config_mask_secrets(const char *in, bt_buf_t *out) {
  int rc = 0;
  size_t entry = out->len;  /* where the current keyword=value entry began in out */
  bool in_kv_entry = false; /* keyword=value pairs since the last entry boundary */
  for (const char *p = in; *p && rc == 0;) {
    size_t slen, kwlen = 0, eqlen;
    if (isspace((unsigned char)*p) || *p == ',') {
      if (*p == ',' && in_kv_entry) {
        rc = verify_pg_entry(out, entry);
        in_kv_entry = false;
      }
      rc = rc ? rc : put(out, p, 1);
      p++;
    } else if ((slen = scheme_len(p)) > 0) {
      if (in_kv_entry)
        rc = verify_pg_entry(out, entry);
      in_kv_entry = false;
      const char *e = p;
      while (*e && !isspace((unsigned char)*e) && !(*e == ',' && at_entry_start(e + 1)))
        e++;
      size_t from = out->len;
      rc = rc ? rc : mask_url(out, p, (size_t)(e - p), slen);
      if (rc == 0 && is_pg_url(p))
        rc = verify_pg_entry(out, from);
      p = e;
    } else if ((eqlen = keyword_eq_len(p, &kwlen)) > 0) {
      if (!in_kv_entry)
        entry = out->len;
      in_kv_entry = true;
      const char *v = p + eqlen + strspn(p + eqlen, " \t\n\r");
      const char *e = value_end(v);
      if (pq_secret_keyword(p, kwlen)) {
        rc = put(out, p, kwlen);
        rc = rc ? rc : put(out, "=***", 4);
      } else {
        rc = put(out, p, (size_t)(e - p));
      }
      p = e;
    } else {
      /* Not a form we know: it could be anything, a bare password included. */
      if (!in_kv_entry)
        entry = out->len;
      in_kv_entry = true;
      const char *e = p;
      while (*e && !isspace((unsigned char)*e) && *e != ',')
        e++;
      rc = put(out, "***", 3);
      p = e;
    }
  }
  if (rc == 0 && in_kv_entry)
    rc = verify_pg_entry(out, entry);
  return rc;
}

void bt_config_log(const bt_config_var_t *vars, size_t n) {
  json_t *cfg = json_object();
  bt_buf_t shown;
  bt_buf_init(&shown, 1 << 20);
  for (size_t i = 0; i < n; i++) {
    const bt_config_var_t *v = &vars[i];
    const char *raw = getenv(v->name);
    if (!raw)
      raw = v->def;
    if (!raw) {
      json_object_set_new(cfg, v->name, json_null());
      continue;
    }
    bt_buf_reset(&shown);
    int rc = 0;
    if (v->flags & BT_CFG_SECRET)
      rc = bt_buf_append(&shown, "***", *raw ? 3 : 0);
    else if (v->flags & BT_CFG_SECRET_URL)
      rc = bt_config_mask_secrets(raw, &shown);
    else
      rc = bt_buf_append(&shown, raw, strlen(raw));
    if (rc == 0 && bt_buf_append(&shown, "", 0) == 0)
      json_object_set_new(cfg, v->name, json_stringn(shown.data, shown.len));
    else
      json_object_set_new(cfg, v->name, json_string("(too long to show)"));
  }
  bt_buf_free(&shown);
  bt_log(BT_LOG_INFO, "effective configuration", "{s:O}", "config", cfg);
  json_decref(cfg);
}

/* Warns about BATON_* variables in the environment that the table does not name (typos).
 * BATON_DEV_* and BATON_TEST_* belong to the dev stack and are ignored. */
static void warn_unknown(const bt_config_var_t *vars, size_t n) {
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "BATON_", 6) != 0 || strncmp(*e, "BATON_DEV_", 10) == 0 ||
        strncmp(*e, "BATON_TEST_", 11) == 0)
      continue;
    size_t len = strcspn(*e, "=");
    bool known = false;
    for (size_t i = 0; i < n && !known; i++)
      known = strlen(vars[i].name) == len && strncmp(vars[i].name, *e, len) == 0;
    if (!known)
      bt_log_warn("unknown BATON_ variable ignored (typo?)", "{s:s#}", "variable", *e, (int)len);
  }
}

void bt_common_config_limits(const bt_common_config_t *cfg, struct bt_http_limits *limits) {
  bt_http_limits_default(limits);
  limits->max_body_bytes = (size_t)cfg->max_body;
  limits->max_header_bytes = (size_t)cfg->max_header;
  limits->header_timeout_ms = (uint64_t)cfg->header_timeout_ms;
  limits->idle_timeout_ms = (uint64_t)cfg->idle_timeout_ms;
  limits->max_connections = (unsigned)cfg->max_connections;
  limits->write_timeout_ms = (uint64_t)cfg->write_timeout_ms;
  limits->max_buffered_bytes = (size_t)cfg->max_buffered;
}

void bt_config_startup(const char *svc, int argc, char **argv, const bt_config_var_t *vars,
                       size_t n, const bt_common_config_t *common) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("%s: configured by environment variables.\n\n", svc);
      bt_config_print_help(stdout, vars, n);
      exit(0);
    }
  }
  char err[512];
  bt_log_init(svc, BT_LOG_INFO);
  if (bt_config_load(vars, n, err, sizeof err) != 0) {
    bt_log_error("invalid configuration", "{s:s}", "error", err);
    fprintf(stderr, "%s: %s\n", svc, err);
    exit(2);
  }
  bt_log_level_t level = BT_LOG_INFO;
  if (bt_log_level_parse(common->log_level, &level) != 0)
    bt_fatal("config: log level %s passed validation but does not parse", common->log_level);
  bt_log_init(svc, level);
  bt_log_set_buffer((size_t)common->log_buffer, 0, 0);
  bt_config_log(vars, n);
  warn_unknown(vars, n);
}
