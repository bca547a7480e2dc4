/* bt_pg_hosts_t: the hosts libpq would try for a DSN, with the DSN laid over libpq's defaults
 * (PGHOST, PGHOSTADDR, PGPORT, PGSERVICE), so that every host name among them can be resolved
 * off the loop and handed back to libpq as host=/hostaddr=/port= lists of equal length. */
#ifndef BT_PG_HOSTS_H
#define BT_PG_HOSTS_H

#include <stdbool.h>
#include <stddef.h>

#include "errors.h"
#include "resolver.h"

typedef struct bt_pg_host {
  char *host;     /* as written: a name, an IP, a socket directory, or "" */
  char *hostaddr; /* as written, or "" */
  char *port;     /* as written, or "" (libpq's default) */
  bool lookup;    /* a name libpq would resolve itself with a blocking getaddrinfo */
} bt_pg_host_t;

typedef struct bt_pg_hosts {
  size_t n;
  bt_pg_host_t *v;
  size_t nlookup; /* entries with lookup set; 0 means libpq never resolves anything */
} bt_pg_hosts_t;

/* Parses dsn over PQconndefaults(). Returns 0, or BT_EINVAL with a message naming the keyword
 * at fault in err (an unparsable DSN, or host/hostaddr/port lists of different lengths), or
 * BT_ENOMEM. */
int bt_pg_hosts_parse(bt_pg_hosts_t *h, const char *dsn, char *err, size_t errlen) BT_MUSTCHECK;
void bt_pg_hosts_free(bt_pg_hosts_t *h);
/* Builds the comma-separated lists libpq takes: every entry that needed a lookup is repeated
 * once per address in addrs[i] (none when its lookup failed), with that address as hostaddr
 * and its name kept as host (for TLS and .pgpass). addrs has h->n entries; only those with
 * lookup set are read. Returns the number of entries and, when it is above 0, malloc'd lists
 * in *host, *hostaddr and *port (the caller frees them); 0 when no entry is left; or a
 * negative BT_E* code. */
int bt_pg_hosts_lists(const bt_pg_hosts_t *h, const bt_addr_list_t *addrs, char **host,
                      char **hostaddr, char **port) BT_MUSTCHECK;

#endif
