/* The outbox relay's entry points: parses its configuration, creates one runtime outbox relay
 * (common/outbox_relay.c) for the event store and one per service outbox
 * (BATON_BROKER_OUTBOX_DSNS), all sharing one producer budget, and wires them into the app's
 * lifecycle and readiness. What each reads lives in relay_store.c and relay_outbox.c. */
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "publish.h"
#include "relay_outbox.h"
#include "relay_route.h"
#include "relay_store.h"
#include "relay_worker.h"
#include "outbox_relay.h"

/* Each worker needs at most two connections: its round's request and the lease keepalive. */
#define RELAY_POOL_SIZE 2
#define MAX_OUTBOXES 64

struct broker_relay {
  broker_t *b;
  broker_relay_routes_t routes;
  bt_outbox_relay_budget_t budget; /* the relays' share of the producer */
  size_t n;                      /* workers: [0] the store, then the outboxes */
  bt_outbox_relay_t *workers[1 + MAX_OUTBOXES];
  bt_pg_pool_t *outbox_pools[MAX_OUTBOXES];
  size_t noutbox_pools;
};

static void config_error(const char *var, const char *why) {
  bt_log_error("invalid configuration", "{s:s, s:s}", "variable", var, "error", why);
  fprintf(stderr, "baton-broker: %s: %s\n", var, why);
}

static void relay_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  broker_relay_t *r = arg;
  for (size_t i = 0; i < r->n; i++)
    bt_outbox_relay_drain(r->workers[i]);
}

static void relay_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  broker_relay_t *r = arg;
  for (size_t i = 0; i < r->n; i++)
    bt_outbox_relay_close(r->workers[i]);
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

/* /readyz: every service outbox database has a connection up (the store's is the store's
 * own dependency). */
static bool outboxes_ready(void *arg) {
  broker_relay_t *r = arg;
  for (size_t i = 0; i < r->noutbox_pools; i++)
    if (!bt_pg_pool_ready(r->outbox_pools[i]))
      return false;
  return true;
}

/* The metrics label of an outbox: "outbox:<database>", stable across replicas whatever the
 * order of their lists, limited to characters that need no escaping in a label, and made
 * unique within this list with "#<n>". */
static void outbox_label(broker_relay_t *r, const char *dsn, char *out, size_t n) {
  const char *db = "";
  PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
  for (PQconninfoOption *o = opts; o && o->keyword; o++)
    if (o->val && strcmp(o->keyword, "dbname") == 0)
      db = o->val;
  size_t len = (size_t)snprintf(out, n, "outbox:");
  for (const char *c = db; *c && len + 4 < n; c++)
    out[len++] = (strchr("\\\"\n", *c) || (unsigned char)*c < 0x20) ? '_' : *c;
  out[len] = '\0';
  PQconninfoFree(opts);
  size_t base = len;
  for (int k = 2;; k++) {
    bool taken = false;
    for (size_t i = 1; i < r->n && !taken; i++)
      taken = strcmp(r->workers[i]->label, out) == 0;
    if (!taken)
      return;
    snprintf(out + base, n - base, "#%d", k);
  }
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
    char why[160], name[96], where[256];
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
    outbox_label(r, t, name, sizeof name);
    bt_pg_pool_t *pool;
    bt_outbox_relay_t *w = calloc(1, sizeof *w);
    if (!w || new_pool(r, t, name, &pool) != 0) {
      free(w);
      rc = BT_ENOMEM;
      break;
    }
    if (relay_outbox_init(w, r->b, pool, name, &r->budget) != 0) {
      bt_pg_pool_close(pool);
      free(w);
      rc = BT_ENOMEM;
      break;
    }
    r->workers[r->n++] = w;
    r->outbox_pools[r->noutbox_pools++] = pool;
    dsn_label(t, where, sizeof where);
    bt_log_info("relay: service outbox configured", "{s:s, s:s}", "relay", name, "database", where);
    index++;
  }
  free(copy);
  return rc;
}

/* The relays' producer, apart from publish's. Gap-less: when Kafka refuses a record, nothing
 * after it in its partition is written (the handle goes fatal instead); the relay that sees
 * the failure renews the handle and re-sends from its durable progress, so a stream's
 * versions reach Kafka in order, duplicates possible (see outbox_relay.c). Publish keeps a
 * producer where one bad record fails only itself. Its queue holds the relays' budget. */
static int start_producer(broker_t *b) {
  bt_kafka_producer_config_t kc = broker_producer_config(
      b, (uint64_t)b->cfg.relay_max_inflight_msgs, (uint64_t)b->cfg.relay_max_inflight_bytes);
  kc.name = "kafka_relay";
  kc.gapless = true;
  kc.renew_on_fatal = true;
  char err[256];
  if (bt_kafka_producer_new(&b->relay_producer, &b->app, &kc, err) != 0) {
    bt_log_error("cannot create the relays' Kafka producer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  return 0;
}

int broker_relay_start(broker_t *b) {
  if (start_producer(b) != 0)
    return BT_EINVAL;
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
  const char *dl = b->cfg.relay_dead_letter_topic;
  if (dl && *dl && !broker_topic_name_valid(dl)) {
    config_error("BATON_BROKER_RELAY_DEAD_LETTER_TOPIC", "not a valid Kafka topic name");
    broker_relay_routes_free(&r->routes);
    free(r);
    return BT_EINVAL;
  }
  /* The store relay has a pool of its own rather than sharing the store's: its reads and
   * progress updates must not queue behind thousands of appends waiting for a group commit,
   * and it must not take connections from them. */
  r->budget.max_msgs = (uint64_t)b->cfg.relay_max_inflight_msgs;
  r->budget.max_bytes = (uint64_t)b->cfg.relay_max_inflight_bytes;
  bt_pg_pool_t *pool;
  bt_outbox_relay_t *w = calloc(1, sizeof *w);
  if (!w || new_pool(r, b->cfg.pg_dsn, "relay", &pool) != 0) {
    free(w);
    broker_relay_routes_free(&r->routes);
    free(r);
    return BT_ENOMEM;
  }
  if (relay_store_init(w, b, pool, &r->routes, &r->budget) != 0) {
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
  if (r->noutbox_pools > 0)
    bt_app_add_dependency(&b->app, "outboxes", outboxes_ready, r);
  bt_outbox_relay_register_metrics(r->workers, r->n, &r->budget);
  if (b->schema_ready)
    broker_relay_go(b);
  bt_log_info("relay started", "{s:s, s:i, s:I, s:I, s:I, s:s}", "routes",
              b->cfg.routes ? b->cfg.routes : "(category C -> C.events)", "outboxes",
              (int)(r->n - 1), "batch", (json_int_t)b->cfg.relay_batch, "poll_ms",
              (json_int_t)b->cfg.relay_poll_ms, "lease_ms", (json_int_t)b->cfg.relay_lease_ms,
              "dead_letter_topic", dl && *dl ? dl : "(none: hold)");
  return 0;
}

void broker_relay_go(broker_t *b) {
  broker_relay_t *r = b->relay;
  if (!r || b->app.state == BT_APP_DRAINING || b->app.state == BT_APP_CLOSING)
    return; /* draining already: the relays were stopped before they started */
  for (size_t i = 0; i < r->n; i++)
    bt_outbox_relay_start(r->workers[i]);
}

void broker_relay_nudge(broker_t *b) {
  if (b->relay && b->relay->n > 0)
    bt_outbox_relay_nudge(b->relay->workers[0]);
}
