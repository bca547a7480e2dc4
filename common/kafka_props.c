/* Parsing of the BATON_KAFKA_PROPERTIES pass-through list, its validation and its masking for
 * logs. The parser is the only place that knows the syntax, so applying and masking can never
 * disagree on where an entry ends (which is what leaks a secret into a log). */
#include "kafka_props.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

/* The runtime sets these itself; each has its own BATON_* variable or is part of a guarantee
 * (idempotence and acks=all for delivery, manual commits for at-least-once). */
static const char *const reserved[] = {
    "bootstrap.servers",
    "metadata.broker.list",
    "statistics.interval.ms",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.gapless.guarantee",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "linger.ms",
    "queue.buffering.max.ms",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "session.timeout.ms",
    "partition.assignment.strategy",
    "transactional.id",
};

/* Glob patterns of secret property names. */
static const char *const secret_patterns[] = {
    "*password*", "*secret*", "*.key.pem", "*jaas*", "sasl.oauthbearer.config",
};

bool bt_kafka_prop_is_secret(const char *name) {
  for (size_t i = 0; i < BT_ARRAY_LEN(secret_patterns); i++)
    if (fnmatch(secret_patterns[i], name, 0) == 0)
      return true;
  return false;
}

typedef struct entry {
  char name[256];
  char value[BT_KAFKA_PROPS_MAX_ENTRY];
  const char *why; /* NULL when the entry parsed */
} entry_t;

static const char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = '\0';
  return s;
}

/* Reads one entry from *p (advanced past it and its comma). Returns false at the end. */
static bool next_entry(const char **p, entry_t *e) {
  if (**p == '\0')
    return false;
  char raw[BT_KAFKA_PROPS_MAX_ENTRY + 256];
  size_t n = 0;
  bool too_long = false;
  const char *s = *p;
  for (; *s && *s != ','; s++) {
    if (*s == '\\' && (s[1] == ',' || s[1] == '\\'))
      s++;
    if (n + 1 < sizeof raw)
      raw[n++] = *s;
    else
      too_long = true;
  }
  raw[n] = '\0';
  *p = *s == ',' ? s + 1 : s;
  e->why = NULL;
  e->name[0] = e->value[0] = '\0';
  char *eq = strchr(raw, '=');
  if (eq)
    *eq = '\0';
  const char *name = trim(raw);
  snprintf(e->name, sizeof e->name, "%s", name);
  if (too_long || strlen(name) >= sizeof e->name)
    e->why = "entry too long";
  else if (!eq)
    e->why = "expected name=value";
  else if (!*name)
    e->why = "empty name";
  else if (strlen(trim(eq + 1)) >= sizeof e->value)
    e->why = "value too long";
  else
    snprintf(e->value, sizeof e->value, "%s", trim(eq + 1));
  return true;
}

int bt_kafka_props_apply(rd_kafka_conf_t *conf, const char *props, char *errstr) {
  static entry_t e; /* large; start-up only, on the loop thread */
  const char *p = props ? props : "";
  for (unsigned i = 1; next_entry(&p, &e); i++) {
    if (i > BT_KAFKA_PROPS_MAX_ENTRIES)
      e.why = "too many entries";
    for (size_t r = 0; !e.why && r < BT_ARRAY_LEN(reserved); r++)
      if (strcmp(e.name, reserved[r]) == 0)
        e.why = "set by baton itself (use its BATON_* setting)";
    char why[200];
    if (!e.why && rd_kafka_conf_set(conf, e.name, e.value, why, sizeof why) != RD_KAFKA_CONF_OK)
      e.why = why;
    if (e.why) {
      snprintf(errstr, 256, "BATON_KAFKA_PROPERTIES entry %u (%.64s): %.150s", i,
               e.name[0] ? e.name : "?", e.why);
      return BT_EINVAL;
    }
  }
  return 0;
}

void bt_kafka_props_mask(const char *props, char *out, size_t outsz) {
  static entry_t e;
  const char *p = props ? props : "";
  size_t n = 0;
  out[0] = '\0';
  while (n < outsz && next_entry(&p, &e)) {
    const char *shown = e.why ? "?" : bt_kafka_prop_is_secret(e.name) ? "***" : e.value;
    int w = snprintf(out + n, outsz - n, "%s%s=%s", n ? "," : "", e.name, shown);
    if (w < 0)
      break;
    n += (size_t)w;
  }
}
