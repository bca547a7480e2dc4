/* Parsing and validation of BATON_* variables against a service's table. A bad value stops
 * start-up with a message naming the variable, because a service that guesses is worse than
 * one that refuses to start. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* Masks "user:password@" in a URL or DSN and password=... in a key/value DSN. */
static void mask_url(const char *in, char *out, size_t outsz) {
  snprintf(out, outsz, "%s", in);
  char *scheme = strstr(out, "://");
  char *at = scheme ? strchr(scheme + 3, '@') : NULL;
  char *colon = scheme && at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
  if (colon) {
    memmove(colon + 4, at, strlen(at) + 1);
    memcpy(colon + 1, "***", 3);
  }
  char *pw = strstr(out, "password=");
  if (pw) {
    char *end = pw + 9;
    while (*end && *end != ' ' && *end != '&')
      end++;
    memmove(pw + 12, end, strlen(end) + 1);
    memcpy(pw + 9, "***", 3);
  }
}

void bt_config_log(const bt_config_var_t *vars, size_t n) {
  json_t *cfg = json_object();
  for (size_t i = 0; i < n; i++) {
    const bt_config_var_t *v = &vars[i];
    const char *raw = getenv(v->name);
    if (!raw)
      raw = v->def;
    if (!raw) {
      json_object_set_new(cfg, v->name, json_null());
      continue;
    }
    char shown[512];
    if (v->flags & BT_CFG_SECRET)
      snprintf(shown, sizeof shown, "%s", *raw ? "***" : "");
    else if (v->flags & BT_CFG_SECRET_URL)
      mask_url(raw, shown, sizeof shown - 4);
    else
      snprintf(shown, sizeof shown, "%s", raw);
    json_object_set_new(cfg, v->name, json_string(shown));
  }
  bt_log(BT_LOG_INFO, "effective configuration", "{s:O}", "config", cfg);
  json_decref(cfg);
}

void bt_config_warn_unknown(const bt_config_var_t *vars, size_t n) {
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

void bt_common_config_limits(const bt_common_config_t *cfg, bt_http_limits_t *limits) {
  bt_http_limits_default(limits);
  limits->max_body_bytes = (size_t)cfg->max_body;
  limits->max_header_bytes = (size_t)cfg->max_header;
  limits->header_timeout_ms = (uint64_t)cfg->header_timeout_ms;
  limits->idle_timeout_ms = (uint64_t)cfg->idle_timeout_ms;
  limits->max_connections = (unsigned)cfg->max_connections;
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
  bt_config_log(vars, n);
  bt_config_warn_unknown(vars, n);
}
