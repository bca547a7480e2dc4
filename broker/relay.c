/* The outbox relay's entry points: parses its configuration, creates one relay worker for the
 * event store and one per service outbox (BATON_BROKER_OUTBOX_DSNS), and wires them into the
 * app's lifecycle. The mechanics (lease, rounds, gap safety) live in relay_worker.c,
 * relay_store.c and relay_outbox.c. */
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "relay_outbox.h"
#include "relay_route.h"
#include "relay_store.h"
#include "relay_worker.h"

/* Each worker needs at most two connections: its round's request and the lease keepalive. */
#define RELAY_POOL_SIZE 2
#define MAX_OUTBOXES 64

struct broker_relay {
  broker_t *b;
  broker_relay_routes_t routes;
  size_t n;                      /* workers: [0] the store, then the outboxes */
  relay_worker_t *workers[1 + MAX_OUTBOXES];
};

static void config_error(const char *var, const char *why) {
  bt_log_error("invalid configuration", "{s:s, s:s}", "variable", var, "error", why);
  fprintf(stderr, "baton-broker: %s: %s\n", var, why);
}

static void relay_drain(bt_app_t *app, void *arg) {
  broker_relay_t *r = arg;
  for (size_t i = 0; i < r->n; i++)
    relay_worker_drain(r->workers[i]);
}

static void relay_close(bt_app_t *app, void *arg) {
  broker_relay_t *r = arg;
  for (size_t i = 0; i < r->n; i++)
    relay_worker_close(r->workers[i]);
}

/* Where a DSN points, for logs: host, port and database, never the password. */
static void dsn_label(const char *dsn, char *out, size_t n) {
  const char *host = "", *port = "", *db = "";
  PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
  for (PQconninfoOption *o = opts; o && o->keyword; o++) {
    if (!o->val)
      continue;
    if (strcmp(o->keyword, "host") == 0 || (strcmp(o->keyword, "hostaddr") == 0 && !*host))
      host = o->val;
    else if (strcmp(o->keyword, "port") == 0)
      port = o->val;
    else if (strcmp(o->keyword, "dbname") == 0)
      db = o->val;
  }
  snprintf(out, n, "%s:%s/%s", host, port, db);
  PQconninfoFree(opts);
}

static int new_pool(broker_relay_t *r, const char *dsn, const char *name, bt_pg_pool_t **out) {
  bt_pg_pool_config_t pc = {
      .dsn = dsn,
      .name = name,
      .size = RELAY_POOL_SIZE,
      .queue_max = 16,
  };
  return bt_pg_pool_new(out, r->b->app.loop, &pc);
}

/* Whether text after a comma of BATON_BROKER_OUTBOX_DSNS starts a new DSN: a URI, or a
 * keyword=value string. Anything else continues the previous one, which keeps multi-host URIs
 * ("postgresql://h1:5432,h2:5432/db") whole. */
static bool starts_dsn(const char *p) {
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p == '\0' || *p == ',')
    return true; /* an empty entry: skipped */
  if (strncmp(p, "postgresql://", 13) == 0 || strncmp(p, "postgres://", 11) == 0)
    return true;
  const char *k = p;
  while ((*k >= 'a' && *k <= 'z') || *k == '_')
    k++;
  if (k == p)
    return false;
  while (*k == ' ' || *k == '\t')
    k++;
  return *k == '=';
}

/* Splits BATON_BROKER_OUTBOX_DSNS and creates a worker per entry. */
static int start_outboxes(broker_relay_t *r, const char *list) {
  char *copy = strdup(list);
  if (!copy)
    return BT_ENOMEM;
  int rc = 0;
  size_t index = 0;
  for (char *t = copy, *next; t && rc == 0; t = next) {
    char *comma = strchr(t, ',');
    while (comma && !starts_dsn(comma + 1))
      comma = strchr(comma + 1, ',');
    next = comma ? comma + 1 : NULL;
    if (comma)
      *comma = '\0';
    while (*t == ' ' || *t == '\t')
      t++;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t'))
      t[--len] = '\0';
    if (!*t)
      continue;
    char why[160], name[32], where[256];
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(t, &perr);
    if (!opts) {
      /* libpq's message may quote the DSN, password included: say which entry instead. */
      snprintf(why, sizeof why, "entry %zu is not a valid Postgres connection string", index + 1);
      PQfreemem(perr);
      config_error("BATON_BROKER_OUTBOX_DSNS", why);
      rc = BT_EINVAL;
      break;
    }
    PQconninfoFree(opts);
    if (index == MAX_OUTBOXES) {
      snprintf(why, sizeof why, "more than %d outboxes", MAX_OUTBOXES);
      config_error("BATON_BROKER_OUTBOX_DSNS", why);
      rc = BT_EINVAL;
      break;
    }
    snprintf(name, sizeof name, "outbox%zu", index);
    bt_pg_pool_t *pool;
    relay_worker_t *w = calloc(1, sizeof *w);
    if (!w || new_pool(r, t, name, &pool) != 0) {
      free(w);
      rc = BT_ENOMEM;
      break;
    }
    if (relay_outbox_init(w, r->b, pool, name) != 0) {
      bt_pg_pool_close(pool);
      free(w);
      rc = BT_ENOMEM;
      break;
    }
    r->workers[r->n++] = w;
    dsn_label(t, where, sizeof where);
    bt_log_info("relay: service outbox configured", "{s:s, s:s}", "relay", name, "database", where);
    index++;
  }
  free(copy);
  return rc;
}

int broker_relay_start(broker_t *b) {
  broker_relay_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  r->b = b;
  char err[320];
  if (broker_relay_routes_parse(&r->routes, b->cfg.routes, err, sizeof err) != 0) {
    config_error("BATON_BROKER_ROUTES", err);
    free(r);
    return BT_EINVAL;
  }
  /* The store relay has a pool of its own rather than sharing the store's: its reads and
   * progress updates must not queue behind thousands of appends waiting for a group commit,
   * and it must not take connections from them. */
  bt_pg_pool_t *pool;
  relay_worker_t *w = calloc(1, sizeof *w);
  if (!w || new_pool(r, b->cfg.pg_dsn, "relay", &pool) != 0) {
    free(w);
    broker_relay_routes_free(&r->routes);
    free(r);
    return BT_ENOMEM;
  }
  if (relay_store_init(w, b, pool, &r->routes) != 0) {
    bt_pg_pool_close(pool);
    free(w);
    broker_relay_routes_free(&r->routes);
    free(r);
    return BT_ENOMEM;
  }
  r->workers[r->n++] = w;
  int rc = b->cfg.outbox_dsns ? start_outboxes(r, b->cfg.outbox_dsns) : 0;
  /* Whatever was created is closed by the hooks; a failed start-up exits right after. */
  bt_app_on_shutdown(&b->app, relay_drain, relay_close, r);
  b->relay = r;
  if (rc != 0)
    return rc;
  relay_worker_register_metrics(r->workers, r->n);
  for (size_t i = 0; i < r->n; i++)
    relay_worker_start(r->workers[i]);
  bt_log_info("relay started", "{s:s, s:i, s:I, s:I, s:I}", "routes",
              b->cfg.routes ? b->cfg.routes : "(category C -> C.events)", "outboxes",
              (int)(r->n - 1), "batch", (json_int_t)b->cfg.relay_batch, "poll_ms",
              (json_int_t)b->cfg.relay_poll_ms, "lease_ms", (json_int_t)b->cfg.relay_lease_ms);
  return 0;
}

void broker_relay_nudge(broker_t *b) {
  if (b->relay && b->relay->n > 0)
    relay_worker_nudge(b->relay->workers[0]);
}
