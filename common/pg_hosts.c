/* Effective libpq host lists. libpq resolves host names inside PQconnectStart/PQconnectPoll
 * with a blocking getaddrinfo(); the runtime resolves them first and passes numeric hostaddr
 * entries instead, which libpq connects to without a lookup. */
#include "pg_hosts.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The n-th comma-separated element of list (n counts from 0), copied; "" past the end. */
static char *element(const char *list, size_t n) {
  const char *p = list ? list : "";
  for (size_t i = 0; i < n && p; i++) {
    p = strchr(p, ',');
    if (p)
      p++;
  }
  if (!p)
    return strdup("");
  return strndup(p, strcspn(p, ","));
}

static size_t count(const char *list) {
  if (!list || !*list)
    return 0;
  size_t n = 1;
  for (const char *p = list; *p; p++)
    n += *p == ',';
  return n;
}

/* The value of keyword in opts, or NULL when unset or empty. */
static const char *opt(const PQconninfoOption *opts, const char *keyword) {
  for (const PQconninfoOption *o = opts; o && o->keyword; o++)
    if (strcmp(o->keyword, keyword) == 0)
      return o->val && *o->val ? o->val : NULL;
  return NULL;
}

/* A DSN that names a service: libpq reads the service file only while it builds a connection,
 * so the values come from a connection that libpq refuses before it resolves anything (an
 * invalid sslmode fails its option check, which runs before the first lookup). Start-up
 * only: this reads files. */
static PQconninfoOption *service_defaults(const char *dsn) {
  const char *const keys[] = {"dbname", "sslmode", NULL};
  const char *const vals[] = {dsn, "bt-settings-probe", NULL};
  PGconn *c = PQconnectStartParams(keys, vals, 1);
  PQconninfoOption *o = c ? PQconninfo(c) : NULL;
  PQfinish(c);
  return o;
}

void bt_pg_hosts_free(bt_pg_hosts_t *h) {
  for (size_t i = 0; h->v && i < h->n; i++) {
    free(h->v[i].host);
    free(h->v[i].hostaddr);
    free(h->v[i].port);
  }
  free(h->v);
  *h = (bt_pg_hosts_t){0};
}

int bt_pg_hosts_parse(bt_pg_hosts_t *h, const char *dsn, char *err, size_t errlen) {
  *h = (bt_pg_hosts_t){0};
  char *why = NULL;
  PQconninfoOption *mine = PQconninfoParse(dsn, &why);
  if (!mine) {
    snprintf(err, errlen, "invalid connection string: %.*s", (int)strcspn(why ? why : "", "\n"),
             why ? why : "out of memory");
    PQfreemem(why);
    return BT_EINVAL;
  }
  /* libpq's own precedence, keyword by keyword: the DSN, then the service file, then the
   * environment (PGHOST, PGHOSTADDR, PGPORT), which PQconndefaults() has read. */
  PQconninfoOption *defs = opt(mine, "service") ? service_defaults(dsn) : PQconndefaults();
  const char *host = opt(mine, "host") ? opt(mine, "host") : opt(defs, "host");
  const char *hostaddr = opt(mine, "hostaddr") ? opt(mine, "hostaddr") : opt(defs, "hostaddr");
  const char *port = opt(mine, "port") ? opt(mine, "port") : opt(defs, "port");
  size_t nh = count(host), na = count(hostaddr), np = count(port);
  size_t n = nh > na ? nh : na;
  int rc = 0;
  if (nh && na && nh != na) {
    snprintf(err, errlen, "host and hostaddr list %zu and %zu entries", nh, na);
    rc = BT_EINVAL;
  } else if (np > 1 && np != n) {
    snprintf(err, errlen, "port lists %zu entries for %zu hosts", np, n);
    rc = BT_EINVAL;
  } else if (n > 0 && !(h->v = calloc(n, sizeof *h->v))) {
    rc = BT_ENOMEM;
  }
  for (size_t i = 0; rc == 0 && i < n; i++) {
    bt_pg_host_t *e = &h->v[i];
    h->n = i + 1;
    e->host = element(host, i);
    e->hostaddr = element(hostaddr, i);
    e->port = element(port, np > 1 ? i : 0);
    if (!e->host || !e->hostaddr || !e->port) {
      rc = BT_ENOMEM;
      break;
    }
    /* Socket directories ("/run/postgresql", "@abstract") and numeric addresses need no
     * lookup, nor does an entry with its own hostaddr. */
    e->lookup = *e->host && !*e->hostaddr && e->host[0] != '/' && e->host[0] != '@' &&
                !bt_addr_is_numeric(e->host);
    h->nlookup += e->lookup;
  }
  PQconninfoFree(mine);
  PQconninfoFree(defs);
  if (rc == BT_ENOMEM)
    snprintf(err, errlen, "out of memory");
  if (rc)
    bt_pg_hosts_free(h);
  return rc;
}

/* Appends one element to a growing list. */
static int add(char **list, size_t *len, const char *s) {
  size_t n = strlen(s);
  char *l = realloc(*list, *len + n + 2);
  if (!l)
    return BT_ENOMEM;
  if (*len)
    l[(*len)++] = ',';
  memcpy(l + *len, s, n + 1);
  *len += n;
  *list = l;
  return 0;
}

int bt_pg_hosts_lists(const bt_pg_hosts_t *h, const bt_addr_list_t *addrs, char **host,
                      char **hostaddr, char **port) {
  char *lists[3] = {calloc(1, 1), calloc(1, 1), calloc(1, 1)};
  size_t lens[3] = {0, 0, 0};
  int rc = lists[0] && lists[1] && lists[2] ? 0 : BT_ENOMEM;
  int entries = 0;
  for (size_t i = 0; rc == 0 && i < h->n; i++) {
    const bt_pg_host_t *e = &h->v[i];
    size_t reps = e->lookup ? addrs[i].n : 1;
    for (size_t k = 0; rc == 0 && k < reps; k++) {
      rc = add(&lists[0], &lens[0], e->host);
      rc = rc ? rc : add(&lists[1], &lens[1], e->lookup ? addrs[i].addr[k] : e->hostaddr);
      rc = rc ? rc : add(&lists[2], &lens[2], e->port);
      entries++;
    }
  }
  if (rc || entries == 0) {
    for (int i = 0; i < 3; i++)
      free(lists[i]);
    return rc;
  }
  *host = lists[0];
  *hostaddr = lists[1];
  *port = lists[2];
  return entries;
}
