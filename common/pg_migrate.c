/* Versioned schema migrations under an advisory lock (see pg_migrate.h). Moved from the
 * broker's store_schema.c when the saga orchestrator needed the same runner. */
#include "pg_migrate.h"

#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static int failf(char *errstr, size_t errsz, const char *fmt, ...) BT_PRINTF(3, 4);
static int failf(char *errstr, size_t errsz, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errstr, errsz, fmt, ap);
  va_end(ap);
  /* libpq messages end in a newline; the log line should not. */
  size_t n = strlen(errstr);
  while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
    errstr[--n] = '\0';
  return BT_EIO;
}

/* Runs one statement; on failure fills errstr naming `what`. */
static int exec(PGconn *c, const char *what, const char *sql, int nparams,
                const char *const *values, PGresult **out, char *errstr, size_t errsz) {
  PGresult *r = PQexecParams(c, sql, nparams, NULL, values, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    int rc = failf(errstr, errsz, "%s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    return rc;
  }
  if (out)
    *out = r;
  else
    PQclear(r);
  return 0;
}

int bt_pg_schema_version(const bt_pg_schema_t *s) {
  return s->n ? s->migrations[s->n - 1].version : 0;
}

/* Applies the missing migrations inside the caller's open transaction. */
static int apply(const bt_pg_schema_t *s, PGconn *c, char *errstr, size_t errsz) {
  const char *key[] = {s->lock_key};
  char create_schema[160], create_ledger[320], read_version[200], record[200];
  snprintf(create_schema, sizeof create_schema, "CREATE SCHEMA IF NOT EXISTS %s", s->schema);
  snprintf(create_ledger, sizeof create_ledger,
           "CREATE TABLE IF NOT EXISTS %s.schema_migrations (version int PRIMARY KEY, "
           "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
           s->schema);
  snprintf(read_version, sizeof read_version,
           "SELECT coalesce(max(version), 0) FROM %s.schema_migrations", s->schema);
  snprintf(record, sizeof record,
           "INSERT INTO %s.schema_migrations (version, name) VALUES ($1::int, $2)", s->schema);
  PGresult *r = NULL;
  /* Quiet "already exists, skipping" notices: libpq would print them on stderr. */
  if (exec(c, "set client_min_messages", "SET LOCAL client_min_messages = warning", 0, NULL, NULL,
           errstr, errsz) ||
      exec(c, "advisory lock", "SELECT pg_advisory_xact_lock($1::bigint)", 1, key, NULL, errstr,
           errsz) ||
      exec(c, "create schema", create_schema, 0, NULL, NULL, errstr, errsz) ||
      exec(c, "create schema_migrations", create_ledger, 0, NULL, NULL, errstr, errsz) ||
      exec(c, "read schema version", read_version, 0, NULL, &r, errstr, errsz))
    return BT_EIO;
  int current = atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  int latest = bt_pg_schema_version(s);
  if (current > latest) {
    /* A newer binary migrated already (a rolling upgrade in progress). Migrations only add,
     * so this binary still finds everything it uses. */
    bt_log_warn("the schema is newer than this binary", "{s:s, s:i, s:i}", "schema", s->what,
                "version", current, "known", latest);
    return 0;
  }
  for (size_t i = 0; i < s->n; i++) {
    const bt_pg_migration_t *m = &s->migrations[i];
    if (m->version <= current)
      continue;
    char what[200], ver[16];
    snprintf(what, sizeof what, "%s migration %d (%s)", s->what, m->version, m->name);
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *vals[] = {ver, m->name};
    /* PQexec, not PQexecParams: a migration is several statements. It holds no input. */
    PGresult *mr = PQexec(c, m->sql);
    if (PQresultStatus(mr) != PGRES_COMMAND_OK && PQresultStatus(mr) != PGRES_TUPLES_OK) {
      int rc = failf(errstr, errsz, "%s: %s", what, PQresultErrorMessage(mr));
      PQclear(mr);
      return rc;
    }
    PQclear(mr);
    if (exec(c, what, record, 2, vals, NULL, errstr, errsz))
      return BT_EIO;
    bt_log_info("applied migration", "{s:s, s:i, s:s}", "schema", s->what, "version", m->version,
                "name", m->name);
  }
  return 0;
}

int bt_pg_migrate(const bt_pg_schema_t *s, const char *dsn, char *errstr, size_t errsz) {
  if (!dsn || !*dsn)
    return failf(errstr, errsz, "no DSN (BATON_PG_DSN)");
  PGconn *c = PQconnectdb(dsn);
  if (PQstatus(c) != CONNECTION_OK) {
    int rc = failf(errstr, errsz, "connect: %s", PQerrorMessage(c));
    PQfinish(c);
    return rc;
  }
  /* Everything, the lock included, is one transaction: a failure leaves the schema as it was,
   * and the lock is released by COMMIT or by the connection's end, whatever happens. */
  int rc = exec(c, "begin", "BEGIN", 0, NULL, NULL, errstr, errsz);
  if (rc == 0)
    rc = apply(s, c, errstr, errsz);
  if (rc == 0)
    rc = exec(c, "commit", "COMMIT", 0, NULL, NULL, errstr, errsz);
  PQfinish(c);
  return rc;
}
