/* Parsing and lookup of BATON_BROKER_ROUTES. Parsed once at start so that a typo stops the
 * broker with a message instead of silently sending a category to the wrong topic. */
#include "relay_route.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publish.h"

static char *trimmed_dup(const char *p, size_t n) {
  while (n > 0 && (*p == ' ' || *p == '\t')) {
    p++;
    n--;
  }
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  return strndup(p, n);
}

/* Categories are what precedes the first '-' of a stream id, so they never contain '-'; we
 * also keep them to characters that can be part of a topic name. */
static int category_valid(const char *c) {
  if (!*c || strlen(c) > 200)
    return 0;
  for (; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '_' || *c == '.'))
      return 0;
  return 1;
}

int broker_relay_routes_parse(broker_relay_routes_t *rt, const char *spec, char *err,
                              size_t errsz) {
  memset(rt, 0, sizeof *rt);
  if (!spec)
    return 0;
  size_t cap = 1;
  for (const char *p = spec; *p; p++)
    cap += *p == ',';
  rt->routes = calloc(cap, sizeof *rt->routes);
  if (!rt->routes)
    return BT_ENOMEM;
  int rc = 0;
  for (const char *p = spec; *p && rc == 0;) {
    size_t len = strcspn(p, ",");
    char *entry = trimmed_dup(p, len);
    p += len + (p[len] == ',');
    if (!entry) {
      rc = BT_ENOMEM;
      break;
    }
    char *eq = strchr(entry, '=');
    if (!*entry) {
      free(entry);
      continue; /* tolerate "a=b," and doubled commas */
    }
    if (!eq) {
      snprintf(err, errsz, "route '%.80s' is not category=topic", entry);
      rc = BT_EINVAL;
    } else {
      *eq = '\0';
      char *cat = trimmed_dup(entry, strlen(entry));
      char *topic = trimmed_dup(eq + 1, strlen(eq + 1));
      if (!cat || !topic) {
        rc = BT_ENOMEM;
      } else if (strcmp(cat, "*") != 0 && !category_valid(cat)) {
        snprintf(err, errsz,
                 "route '%.80s=%.80s': the category must be '*' or 1-200 of [a-zA-Z0-9._] "
                 "(the part of a stream id before its first '-')",
                 cat, topic);
        rc = BT_EINVAL;
      } else if (!broker_topic_name_valid(topic)) {
        snprintf(err, errsz,
                 "route '%.80s=%.80s': '%.80s' is not a valid Kafka topic name "
                 "(1-249 of [a-zA-Z0-9._-])",
                 cat, topic, topic);
        rc = BT_EINVAL;
      } else {
        bool dup = strcmp(cat, "*") == 0 ? rt->fallback != NULL : false;
        for (size_t i = 0; i < rt->n && !dup; i++)
          dup = strcmp(rt->routes[i].category, cat) == 0;
        if (dup) {
          snprintf(err, errsz, "category '%.80s' is routed twice", cat);
          rc = BT_EINVAL;
        } else if (strcmp(cat, "*") == 0) {
          rt->fallback = topic;
          topic = NULL;
        } else {
          rt->routes[rt->n++] = (broker_relay_route_t){cat, topic};
          cat = topic = NULL;
        }
      }
      free(cat);
      free(topic);
    }
    free(entry);
  }
  if (rc == BT_ENOMEM)
    snprintf(err, errsz, "out of memory");
  if (rc != 0)
    broker_relay_routes_free(rt);
  return rc;
}

const char *broker_relay_routes_topic(const broker_relay_routes_t *rt, const char *stream,
                                      char *buf, size_t bufsz) {
  size_t clen = strcspn(stream, "-");
  for (size_t i = 0; i < rt->n; i++)
    if (strlen(rt->routes[i].category) == clen &&
        strncmp(rt->routes[i].category, stream, clen) == 0)
      return rt->routes[i].topic;
  if (rt->fallback)
    return rt->fallback;
  int n = snprintf(buf, bufsz, "%.*s.events", (int)clen, stream);
  return n > 0 && (size_t)n < bufsz ? buf : NULL;
}

void broker_relay_routes_free(broker_relay_routes_t *rt) {
  for (size_t i = 0; i < rt->n; i++) {
    free(rt->routes[i].category);
    free(rt->routes[i].topic);
  }
  free(rt->routes);
  free(rt->fallback);
  memset(rt, 0, sizeof *rt);
}
