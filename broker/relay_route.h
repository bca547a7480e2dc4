/* broker_relay_routes_t: the relay's category-to-topic table, parsed once from
 * BATON_BROKER_ROUTES ("order=orders.events,*=events"). A stream's category is the part of its
 * id before the first '-'; a category without a route goes to the '*' route, or to
 * "<category>.events" when there is none. */
#ifndef BROKER_RELAY_ROUTE_H
#define BROKER_RELAY_ROUTE_H

#include <stddef.h>

#include "errors.h"

typedef struct broker_relay_route {
  char *category;
  char *topic;
} broker_relay_route_t;

typedef struct broker_relay_routes {
  broker_relay_route_t *routes;
  size_t n;
  char *fallback; /* the '*' route's topic, or NULL */
} broker_relay_routes_t;

/* Parses spec (NULL or empty: no routes). Returns 0, or BT_EINVAL with a one-line reason in
 * err (naming the entry at fault, not the variable), or BT_ENOMEM. On error rt is left
 * empty. */
int broker_relay_routes_parse(broker_relay_routes_t *rt, const char *spec, char *err,
                              size_t errsz) BT_MUSTCHECK;

/* The topic for a stream id: a borrowed route topic, or "<category>.events" written into buf
 * (NULL if it does not fit). The result is not checked for topic-name validity. */
const char *broker_relay_routes_topic(const broker_relay_routes_t *rt, const char *stream,
                                      char *buf, size_t bufsz);

void broker_relay_routes_free(broker_relay_routes_t *rt);

#endif
