/* The event store's schema and its versioned migrations, applied by broker_store_migrate() at
 * start and by `baton-broker migrate`. Migrations are append-only: a released entry is never
 * edited, a change is a new entry. The gap-safety contract the schema serves is described at
 * the top of store.c. */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "store_schema.h"

/* Every replica that starts takes this transaction-scoped advisory lock before it reads
 * baton.schema_migrations, so N replicas starting together apply each migration exactly once
 * and the others wait, then find nothing left to do. ("baton" in ASCII, then 1.) */
#define MIGRATION_LOCK_KEY "7089075262275584001"

typedef struct migration {
  int version;
  const char *name;
  const char *sql;
} migration_t;

static const migration_t migrations[] = {
    {1, "streams, positions and events",
     /* One row per stream: its current version. The row is the stream's lock: an append takes
      * it FOR UPDATE, so contention is per stream and never per category or table. A row with
      * version 0 can exist (an append with an expected version that found no stream creates
      * it to wait on concurrent creators); it reads as "no stream". */
     "CREATE TABLE baton.streams (\n"
     "  stream text PRIMARY KEY,\n"
     "  version bigint NOT NULL CHECK (version >= 0)\n"
     ");\n"
     /* The single row that hands out global positions. Its row lock, taken as the last step of
      * an append transaction and held until COMMIT, is what makes position order equal commit
      * order (see store.c). */
     "CREATE TABLE baton.positions (\n"
     "  id int PRIMARY KEY CHECK (id = 1),\n"
     "  last bigint NOT NULL\n"
     ");\n"
     "INSERT INTO baton.positions (id, last) VALUES (1, 0);\n"
     /* The events. position is dense only per commit (a failed transaction consumes none, so
      * positions are dense overall too), versions are dense from 1 per stream. There is no
      * foreign key to baton.streams: every insert already holds the stream's row lock, and the
      * check would cost an index probe per event. data is the CloudEvent's data as bytes;
      * extensions is an object of name -> string. */
     "CREATE TABLE baton.events (\n"
     "  position bigint PRIMARY KEY,\n"
     "  stream text NOT NULL,\n"
     "  version bigint NOT NULL CHECK (version >= 1),\n"
     "  id text NOT NULL,\n"
     "  type text NOT NULL,\n"
     "  source text NOT NULL,\n"
     "  specversion text NOT NULL,\n"
     "  subject text,\n"
     "  time text,\n"
     "  datacontenttype text,\n"
     "  dataschema text,\n"
     "  data bytea,\n"
     "  extensions jsonb,\n"
     "  recorded_at timestamptz NOT NULL DEFAULT now(),\n"
     "  UNIQUE (stream, version),\n"
     "  UNIQUE (stream, id)\n"
     ");\n"},
    {2, "append_batch(): one group commit per call",
     /* One call appends a whole group of independent appends in the caller's transaction and
      * answers one row per append, in the order given:
      *   status 0 appended, 1 duplicate (every id already stored: the original versions and
      *   position, nothing written), 2 wrong expected version, 3 partial duplicate (`stored`
      *   of the ids are stored already).
      * p_expected is -1 for "any", else the exact current version required (0: no stream).
      * Event arrays are flattened in append order; p_evapp gives each event's append (1-based)
      * and p_data is hex.
      *
      * Order of work, which the deadlock freedom and the gap-safety contract rely on:
      *  1. streams are locked in "C" collation order of their names (then arrival order within
      *     a stream), so any two callers, on any replica, lock in the same order;
      *  2. the idempotency and expected-version checks run after the stream's lock is held, so
      *     concurrent retries of one append see each other's committed events;
      *  3. the positions row is locked last, then the events are inserted, then the caller
      *     commits: nothing after step 3 can wait for another transaction (every unique key
      *     of baton.events is guarded by a lock we hold), so the positions lock is held only
      *     for the insert and the COMMIT.
      * A new stream whose expectation allows it is created at its final version, which saves
      * the UPDATE on the common path. Arrays are indexed in PL/pgSQL, which keeps function
      * arguments in expanded form, so subscripts cost O(1). */
     "CREATE FUNCTION baton.append_batch(\n"
     "  p_streams text[], p_expected bigint[], p_counts int[], p_evapp int[], p_ids text[],\n"
     "  p_types text[], p_sources text[], p_specversions text[], p_subjects text[],\n"
     "  p_times text[], p_dctypes text[], p_dataschemas text[], p_data text[],\n"
     "  p_extensions jsonb[])\n"
     "RETURNS TABLE (status int, first_version bigint, last_version bigint, \"position\" bigint,\n"
     "               current_version bigint, stored int)\n"
     "LANGUAGE plpgsql AS $fn$\n"
     "DECLARE\n"
     "  n int := coalesce(cardinality(p_streams), 0);\n"
     "  r_status int[] := array_fill(0, ARRAY[n]);\n"
     "  r_first bigint[] := array_fill(0::bigint, ARRAY[n]);\n"
     "  r_last bigint[] := array_fill(0::bigint, ARRAY[n]);\n"
     "  r_pos bigint[] := array_fill(0::bigint, ARRAY[n]);\n"
     "  r_cur bigint[] := array_fill(0::bigint, ARRAY[n]);\n"
     "  r_stored int[] := array_fill(0, ARRAY[n]);\n"
     "  v_off int[] := array_fill(0, ARRAY[n]);\n"
     "  v_new bool[] := array_fill(false, ARRAY[n]);\n"
     "  i int; k int := 0; s text; cnt int; exp bigint; cur bigint;\n"
     "  d_n int; d_first bigint; d_last bigint; d_pos bigint;\n"
     "  total bigint := 0; pos bigint;\n"
     "BEGIN\n"
     "  IF n = 0 THEN RETURN; END IF;\n"
     "  FOR i IN 1..n LOOP\n"
     "    v_off[i] := k;\n"
     "    k := k + p_counts[i];\n"
     "  END LOOP;\n"
     "  FOR i IN SELECT u.ord FROM unnest(p_streams) WITH ORDINALITY AS u(s, ord)\n"
     "           ORDER BY u.s COLLATE \"C\", u.ord LOOP\n"
     "    s := p_streams[i]; cnt := p_counts[i]; exp := p_expected[i];\n"
     "    cur := NULL;\n"
     "    IF exp <= 0 THEN\n"
     "      INSERT INTO baton.streams (stream, version) VALUES (s, cnt)\n"
     "        ON CONFLICT DO NOTHING RETURNING 0 INTO cur;\n"
     "    ELSE\n"
     "      INSERT INTO baton.streams (stream, version) VALUES (s, 0) ON CONFLICT DO NOTHING;\n"
     "    END IF;\n"
     "    IF cur IS NULL THEN\n"
     "      SELECT t.version INTO cur FROM baton.streams AS t WHERE t.stream = s FOR UPDATE;\n"
     "      d_n := 0;\n"
     "      IF cur > 0 THEN\n"
     "        SELECT count(*), min(e.version), max(e.version), max(e.position)\n"
     "          INTO d_n, d_first, d_last, d_pos\n"
     "          FROM baton.events AS e\n"
     "          WHERE e.stream = s AND e.id = ANY (p_ids[v_off[i] + 1 : v_off[i] + cnt]);\n"
     "      END IF;\n"
     "      IF d_n = cnt THEN\n"
     "        r_status[i] := 1; r_first[i] := d_first; r_last[i] := d_last; r_pos[i] := d_pos;\n"
     "        r_cur[i] := cur; r_stored[i] := d_n;\n"
     "        CONTINUE;\n"
     "      ELSIF d_n > 0 THEN\n"
     "        r_status[i] := 3; r_cur[i] := cur; r_stored[i] := d_n;\n"
     "        CONTINUE;\n"
     "      ELSIF exp >= 0 AND cur <> exp THEN\n"
     "        r_status[i] := 2; r_cur[i] := cur;\n"
     "        CONTINUE;\n"
     "      END IF;\n"
     "      UPDATE baton.streams AS t SET version = cur + cnt WHERE t.stream = s;\n"
     "    END IF;\n"
     "    v_new[i] := true;\n"
     "    r_first[i] := cur + 1; r_last[i] := cur + cnt; r_cur[i] := cur + cnt;\n"
     "    total := total + cnt;\n"
     "  END LOOP;\n"
     "  IF total > 0 THEN\n"
     "    UPDATE baton.positions AS p SET last = p.last + total WHERE p.id = 1\n"
     "      RETURNING p.last - total INTO pos;\n"
     "    FOR i IN 1..n LOOP\n"
     "      IF v_new[i] THEN\n"
     "        pos := pos + p_counts[i];\n"
     "        r_pos[i] := pos;\n"
     "      END IF;\n"
     "    END LOOP;\n"
     "    INSERT INTO baton.events (position, stream, version, id, type, source, specversion,\n"
     "                              subject, time, datacontenttype, dataschema, data, extensions)\n"
     "    SELECT r_pos[e.a] - r_last[e.a] + r_first[e.a] - 1 + (e.g - v_off[e.a]),\n"
     "           p_streams[e.a], r_first[e.a] - 1 + (e.g - v_off[e.a]),\n"
     "           e.id, e.type, e.source, e.specversion, e.subject, e.time, e.dct, e.dsch,\n"
     "           decode(e.data, 'hex'), e.ext\n"
     "    FROM unnest(p_evapp, p_ids, p_types, p_sources, p_specversions, p_subjects, p_times,\n"
     "                p_dctypes, p_dataschemas, p_data, p_extensions)\n"
     "         WITH ORDINALITY AS e(a, id, type, source, specversion, subject, time, dct, dsch,\n"
     "                              data, ext, g)\n"
     "    WHERE v_new[e.a];\n"
     "  END IF;\n"
     "  RETURN QUERY SELECT * FROM unnest(r_status, r_first, r_last, r_pos, r_cur, r_stored);\n"
     "END\n"
     "$fn$;\n"},
};

int broker_store_schema_version(void) { return migrations[BT_ARRAY_LEN(migrations) - 1].version; }

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

/* Applies the missing migrations inside the caller's open transaction. */
static int apply(PGconn *c, char *errstr, size_t errsz) {
  const char *key[] = {MIGRATION_LOCK_KEY};
  PGresult *r = NULL;
  /* Quiet "already exists, skipping" notices: libpq would print them on stderr. */
  if (exec(c, "set client_min_messages", "SET LOCAL client_min_messages = warning", 0, NULL, NULL,
           errstr, errsz) ||
      exec(c, "advisory lock", "SELECT pg_advisory_xact_lock($1::bigint)", 1, key, NULL, errstr,
           errsz) ||
      exec(c, "create schema", "CREATE SCHEMA IF NOT EXISTS baton", 0, NULL, NULL, errstr, errsz) ||
      exec(c, "create baton.schema_migrations",
           "CREATE TABLE IF NOT EXISTS baton.schema_migrations (version int PRIMARY KEY, "
           "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
           0, NULL, NULL, errstr, errsz) ||
      exec(c, "read schema version",
           "SELECT coalesce(max(version), 0) FROM baton.schema_migrations", 0, NULL, &r, errstr,
           errsz))
    return BT_EIO;
  int current = atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  int latest = broker_store_schema_version();
  if (current > latest) {
    /* A newer broker migrated already (a rolling upgrade in progress). Migrations only add,
     * so this binary still finds everything it uses. */
    bt_log_warn("the event store schema is newer than this binary", "{s:i, s:i}", "schema", current,
                "known", latest);
    return 0;
  }
  for (size_t i = 0; i < BT_ARRAY_LEN(migrations); i++) {
    const migration_t *m = &migrations[i];
    if (m->version <= current)
      continue;
    char what[160], ver[16];
    snprintf(what, sizeof what, "migration %d (%s)", m->version, m->name);
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
    if (exec(c, what, "INSERT INTO baton.schema_migrations (version, name) VALUES ($1::int, $2)", 2,
             vals, NULL, errstr, errsz))
      return BT_EIO;
    bt_log_info("applied migration", "{s:i, s:s}", "version", m->version, "name", m->name);
  }
  return 0;
}

int broker_store_migrate(const char *dsn, char *errstr, size_t errsz) {
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
    rc = apply(c, errstr, errsz);
  if (rc == 0)
    rc = exec(c, "commit", "COMMIT", 0, NULL, NULL, errstr, errsz);
  PQfinish(c);
  return rc;
}
