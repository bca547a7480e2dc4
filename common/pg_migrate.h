/* bt_pg_migrate: versioned, append-only schema migrations for a service's Postgres schema,
 * applied at start by every replica under a transaction-scoped advisory lock, so N replicas
 * starting together apply each migration exactly once. Each schema keeps its own
 * <schema>.schema_migrations ledger, so services sharing a database migrate independently.
 * Start-up only: it connects and blocks (PQexec), never on the loop. */
#ifndef BT_PG_MIGRATE_H
#define BT_PG_MIGRATE_H

#include <stddef.h>

#include "errors.h"

typedef struct bt_pg_migration {
  int version;     /* 1, 2, ...: strictly increasing; a released entry is never edited */
  const char *name;
  const char *sql; /* several statements allowed; no parameters */
} bt_pg_migration_t;

typedef struct bt_pg_schema {
  const char *schema;   /* a plain identifier ("baton", "saga"); created if missing */
  const char *lock_key; /* pg_advisory_xact_lock key, decimal text, unique per schema */
  const char *what;     /* "event store": names the schema in logs and messages */
  const bt_pg_migration_t *migrations;
  size_t n;
} bt_pg_schema_t;

/* Applies the missing migrations of s on dsn in one transaction (a failure leaves the schema
 * as it was). A database already newer than the binary is accepted with a warning: migrations
 * only add, so a rolling upgrade works. Returns 0, or BT_EIO with a message naming the step
 * (and the migration) at fault in errstr. */
int bt_pg_migrate(const bt_pg_schema_t *s, const char *dsn, char *errstr, size_t errsz) BT_MUSTCHECK;
/* The version the last migration of s brings the schema to. */
int bt_pg_schema_version(const bt_pg_schema_t *s);

#endif
