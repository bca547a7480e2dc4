/* The projector's Postgres schema. The fixed tables are migrated by bt_pg_migrate; the tables
 * of each projection version are created from its definition at start (and, for a rebuild,
 * beside the live ones), because their columns follow the definition's fields. Layout:
 * /work/wt/briefs/proj-layout.md, restated in the README's projector section. */
#include "proj_schema.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "pg_migrate.h"

/* "proj" in ASCII (0x70726f6a), then 1: distinct from the broker's and the saga's keys. */
#define PROJ_MIGRATION_LOCK_KEY "1886547818000001"

static const bt_pg_migration_t migrations[] = {
    {1, "projection versions, the live version and the sinks' offsets",
     /* One row per version ever built: building while a rebuild runs, live, then retired. */
     "CREATE TABLE projector.versions (\n"
     "  projection text NOT NULL,\n"
     "  version int NOT NULL CHECK (version >= 1),\n"
     "  state text NOT NULL CHECK (state IN ('building', 'live', 'retired')),\n"
     "  created_at timestamptz NOT NULL DEFAULT now(),\n"
     "  PRIMARY KEY (projection, version)\n"
     ");\n"
     /* What readers of the Postgres copy use; switched in one UPDATE by a rebuild. */
     "CREATE TABLE projector.current (\n"
     "  projection text PRIMARY KEY,\n"
     "  version int NOT NULL\n"
     ");\n"
     /* The Postgres sink's offsets: the next offset to apply per partition, written in the
      * same transaction as the rows, which is the sink's exactly-once guard. */
     "CREATE TABLE projector.offsets (\n"
     "  projection text NOT NULL,\n"
     "  version int NOT NULL,\n"
     "  topic text NOT NULL,\n"
     "  partition int NOT NULL,\n"
     "  next_offset bigint NOT NULL,\n"
     "  PRIMARY KEY (projection, version, topic, partition)\n"
     ");\n"
     /* The guard of one sink write: moves each partition of the batch from the offset the
      * writer based its work on to the batch's next offset, or raises 40001 (a serialization
      * failure, retried by the caller after reloading) when another writer moved it, so the
      * whole transaction, rows included, rolls back. Rows are locked in (topic, partition)
      * order by the caller, so two writers cannot deadlock. */
     "CREATE FUNCTION projector.advance(p text, v int, moves jsonb) RETURNS void\n"
     "LANGUAGE plpgsql AS $$\n"
     "DECLARE m jsonb; cur bigint;\n"
     "BEGIN\n"
     "  FOR m IN SELECT * FROM jsonb_array_elements(moves) LOOP\n"
     "    SELECT next_offset INTO cur FROM projector.offsets\n"
     "     WHERE projection = p AND version = v AND topic = m->>'t'\n"
     "       AND partition = (m->>'p')::int FOR UPDATE;\n"
     "    IF coalesce(cur, 0) <> (m->>'from')::bigint THEN\n"
     "      RAISE EXCEPTION 'offset of %:% moved to % (expected %)', m->>'t', m->>'p',\n"
     "        coalesce(cur, 0), m->>'from' USING ERRCODE = '40001';\n"
     "    END IF;\n"
     "    INSERT INTO projector.offsets AS o (projection, version, topic, partition, next_offset)\n"
     "      VALUES (p, v, m->>'t', (m->>'p')::int, (m->>'to')::bigint)\n"
     "      ON CONFLICT (projection, version, topic, partition)\n"
     "      DO UPDATE SET next_offset = excluded.next_offset;\n"
     "  END LOOP;\n"
     "END $$;\n"},
};

static const bt_pg_schema_t schema = {"projector", PROJ_MIGRATION_LOCK_KEY, "projector",
                                      migrations, BT_ARRAY_LEN(migrations)};

int proj_schema_version(void) { return bt_pg_schema_version(&schema); }

int proj_schema_migrate(const char *dsn, char *errstr, size_t errsz) {
  return bt_pg_migrate(&schema, dsn, errstr, errsz);
}

size_t proj_schema_columns(const proj_def_t *d, const char **names, bool *is_sum, size_t max) {
  size_t n = 0;
  const char *cand[4];
  for (size_t i = 0; i < d->nindexes + d->naggregates; i++) {
    size_t nc = 0;
    if (i < d->nindexes) {
      cand[nc++] = d->indexes[i].field;
      if (d->indexes[i].order)
        cand[nc++] = d->indexes[i].order;
    } else {
      const proj_aggregate_t *ag = &d->aggregates[i - d->nindexes];
      cand[nc++] = ag->group;
      if (ag->sum)
        cand[nc++] = ag->sum;
    }
    for (size_t c = 0; c < nc; c++) {
      bool sum = i >= d->nindexes && c == 1;
      size_t j = 0;
      while (j < n && strcmp(names[j], cand[c]) != 0)
        j++;
      if (j < n) {
        /* A field both summed and grouped or indexed is a number: bigint wins. */
        is_sum[j] = is_sum[j] || sum;
      } else if (n < max) {
        names[n] = cand[c];
        is_sum[n++] = sum;
      }
    }
  }
  return n;
}

void proj_schema_table(char *out, size_t outsz, const char *projection, int version,
                       const char *suffix) {
  /* Projection names are validated identifiers (no quote), so quoting is enough. */
  snprintf(out, outsz, "projector.\"%s_v%d%s\"", projection, version, suffix);
}

static int failf(char *errstr, size_t errsz, const char *what, PGconn *c, PGresult *r) {
  snprintf(errstr, errsz, "%s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(c));
  size_t n = strlen(errstr);
  while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
    errstr[--n] = '\0';
  PQclear(r);
  return BT_EIO;
}

static int exec(PGconn *c, const char *what, const char *sql, int nparams,
                const char *const *values, PGresult **out, char *errstr, size_t errsz) {
  PGresult *r = PQexecParams(c, sql, nparams, NULL, values, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    return failf(errstr, errsz, what, c, r);
  if (out)
    *out = r;
  else
    PQclear(r);
  return 0;
}

int proj_schema_quote_ident(bt_buf_t *b, const char *s) {
  int rc = bt_buf_append(b, "\"", 1);
  for (const char *p = s; !rc && *p; p++)
    rc = *p == '"' ? bt_buf_append(b, "\"\"", 2) : bt_buf_append(b, p, 1);
  return rc ? rc : bt_buf_append(b, "\"", 1);
}

/* Creates the tables of version v of d when missing. */
static int create_tables(PGconn *c, const proj_def_t *d, int v, char *errstr, size_t errsz) {
  char table[300], agg[300];
  proj_schema_table(table, sizeof table, d->name, v, "");
  proj_schema_table(agg, sizeof agg, d->name, v, "_agg");
  const char *cols[64];
  bool is_sum[64];
  size_t nc = proj_schema_columns(d, cols, is_sum, 64);
  bt_buf_t b;
  bt_buf_init(&b, 0);
  int rc = bt_buf_appendf(&b, "CREATE TABLE IF NOT EXISTS %s (key text PRIMARY KEY, doc jsonb NOT NULL",
                          table);
  for (size_t i = 0; !rc && i < nc; i++) {
    rc = bt_buf_append(&b, ", ", 2);
    if (!rc)
      rc = proj_schema_quote_ident(&b, cols[i]);
    if (!rc)
      rc = bt_buf_appendf(&b, " %s", is_sum[i] ? "bigint" : "text");
  }
  if (!rc)
    rc = bt_buf_append(&b, ")", 1);
  if (rc) {
    bt_buf_free(&b);
    snprintf(errstr, errsz, "out of memory");
    return BT_ENOMEM;
  }
  rc = exec(c, "create projection table", b.data, 0, NULL, NULL, errstr, errsz);
  bt_buf_free(&b);
  if (rc)
    return rc;
  /* An index per index definition on its value and order columns, for the queryable copy. */
  for (size_t i = 0; i < d->nindexes; i++) {
    bt_buf_init(&b, 0);
    rc = bt_buf_appendf(&b, "CREATE INDEX IF NOT EXISTS \"%s_v%d_%s\" ON %s (", d->name, v,
                        d->indexes[i].name, table);
    if (!rc)
      rc = proj_schema_quote_ident(&b, d->indexes[i].field);
    if (!rc && d->indexes[i].order) {
      rc = bt_buf_append(&b, ", ", 2);
      if (!rc)
        rc = proj_schema_quote_ident(&b, d->indexes[i].order);
    }
    if (!rc)
      rc = bt_buf_append(&b, ")", 1);
    if (!rc)
      rc = exec(c, "create projection index", b.data, 0, NULL, NULL, errstr, errsz);
    bt_buf_free(&b);
    if (rc)
      return rc;
  }
  char sql[800];
  snprintf(sql, sizeof sql,
           "CREATE TABLE IF NOT EXISTS %s (aggregate text NOT NULL, grp text NOT NULL, "
           "total bigint NOT NULL, PRIMARY KEY (aggregate, grp))",
           agg);
  return exec(c, "create aggregate table", sql, 0, NULL, NULL, errstr, errsz);
}

/* Parses "3,5,7" (the retired versions, oldest first) into r. Returns 0 or BT_ENOMEM. */
static int parse_retired(const char *list, proj_retired_t *r) {
  size_t n = *list ? 1 : 0;
  for (const char *s = list; *s; s++)
    n += *s == ',';
  r->n = 0;
  r->v = n ? calloc(n, sizeof *r->v) : NULL;
  if (n && !r->v)
    return BT_ENOMEM;
  char *end;
  for (const char *s = list; *s && r->n < n; s = *end ? end + 1 : end)
    r->v[r->n++] = (int)strtol(s, &end, 10);
  return 0;
}

static int prepare_one(PGconn *c, const proj_def_t *d, int *version, int *building,
                       proj_retired_t *retired, char *errstr, size_t errsz) {
  const char *p[] = {d->name};
  PGresult *r = NULL;
  int rc = exec(c, "claim version 1",
                "INSERT INTO projector.versions (projection, version, state) "
                "SELECT $1, 1, 'live' WHERE NOT EXISTS "
                "(SELECT 1 FROM projector.current WHERE projection = $1) "
                "ON CONFLICT DO NOTHING",
                1, p, NULL, errstr, errsz);
  if (!rc)
    rc = exec(c, "set current", "INSERT INTO projector.current VALUES ($1, 1) ON CONFLICT DO NOTHING",
              1, p, NULL, errstr, errsz);
  if (!rc)
    rc = exec(c, "read current", "SELECT version FROM projector.current WHERE projection = $1", 1,
              p, &r, errstr, errsz);
  if (rc)
    return rc;
  *version = atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  /* A rebuild interrupted by a crash resumes: its version keeps its tables and offsets. A
   * dropped version loses its row (proj_schema_drop_version), so a retired row is one whose
   * drop a crash prevented; each crash during a grace period can leave one more. */
  rc = exec(c, "read building and retired",
            "SELECT coalesce(max(version) FILTER (WHERE state = 'building'), 0), "
            "coalesce(string_agg(version::text, ',' ORDER BY version) "
            "FILTER (WHERE state = 'retired'), '') "
            "FROM projector.versions WHERE projection = $1",
            1, p, &r, errstr, errsz);
  if (rc)
    return rc;
  *building = atoi(PQgetvalue(r, 0, 0));
  rc = parse_retired(PQgetvalue(r, 0, 1), retired);
  PQclear(r);
  if (rc) {
    snprintf(errstr, errsz, "out of memory");
    return rc;
  }
  if ((d->sinks & PROJ_SINK_POSTGRES))
    rc = create_tables(c, d, *version, errstr, errsz);
  if (!rc && *building && (d->sinks & PROJ_SINK_POSTGRES))
    rc = create_tables(c, d, *building, errstr, errsz);
  return rc;
}

/* Connects and opens a transaction holding the migration lock, so replicas preparing or
 * rebuilding at once take turns. Returns the connection or NULL with errstr. */
static PGconn *begin_locked(const char *dsn, char *errstr, size_t errsz) {
  PGconn *c = PQconnectdb(dsn);
  if (PQstatus(c) != CONNECTION_OK) {
    failf(errstr, errsz, "connect", c, NULL);
    PQfinish(c);
    return NULL;
  }
  const char *key[] = {PROJ_MIGRATION_LOCK_KEY};
  if (exec(c, "begin", "BEGIN", 0, NULL, NULL, errstr, errsz) ||
      exec(c, "set client_min_messages", "SET LOCAL client_min_messages = warning", 0, NULL, NULL,
           errstr, errsz) ||
      exec(c, "advisory lock", "SELECT pg_advisory_xact_lock($1::bigint)", 1, key, NULL, errstr,
           errsz)) {
    PQfinish(c);
    return NULL;
  }
  return c;
}

static int commit_close(PGconn *c, int rc, char *errstr, size_t errsz) {
  if (!rc)
    rc = exec(c, "commit", "COMMIT", 0, NULL, NULL, errstr, errsz);
  PQfinish(c);
  return rc;
}

void proj_schema_retired_free(proj_retired_t *retired, size_t n) {
  for (size_t i = 0; retired && i < n; i++) {
    free(retired[i].v);
    retired[i].v = NULL;
    retired[i].n = 0;
  }
}

int proj_schema_prepare(const char *dsn, const proj_def_set_t *defs, int *versions, int *building,
                        proj_retired_t *retired, char *errstr, size_t errsz) {
  PGconn *c = begin_locked(dsn, errstr, errsz);
  if (!c)
    return BT_EIO;
  int rc = 0;
  for (size_t i = 0; !rc && i < defs->ndefs; i++)
    rc = prepare_one(c, &defs->defs[i], &versions[i], &building[i], &retired[i], errstr, errsz);
  return commit_close(c, rc, errstr, errsz);
}

int proj_schema_begin_rebuild(const char *dsn, const proj_def_t *d, int *version, char *errstr,
                              size_t errsz) {
  PGconn *c = begin_locked(dsn, errstr, errsz);
  if (!c)
    return BT_EIO;
  const char *p[] = {d->name};
  PGresult *r = NULL;
  int rc = exec(c, "read versions",
                "SELECT coalesce(max(version), 0), count(*) FILTER (WHERE state = 'building') "
                "FROM projector.versions WHERE projection = $1",
                1, p, &r, errstr, errsz);
  if (rc) {
    PQfinish(c);
    return rc;
  }
  int max = atoi(PQgetvalue(r, 0, 0)), nbuilding = atoi(PQgetvalue(r, 0, 1));
  PQclear(r);
  if (nbuilding > 0) {
    snprintf(errstr, errsz, "projection %s: a rebuild (version %d) is already running", d->name,
             max);
    *version = max;
    PQfinish(c);
    return BT_ECONFLICT;
  }
  *version = max + 1;
  char v[16];
  snprintf(v, sizeof v, "%d", *version);
  const char *pv[] = {d->name, v};
  rc = exec(c, "add version",
            "INSERT INTO projector.versions (projection, version, state) VALUES ($1, $2::int, "
            "'building')",
            2, pv, NULL, errstr, errsz);
  if (!rc && (d->sinks & PROJ_SINK_POSTGRES))
    rc = create_tables(c, d, *version, errstr, errsz);
  return commit_close(c, rc, errstr, errsz);
}

int proj_schema_switch(const char *dsn, const char *projection, int from, int to, char *errstr,
                       size_t errsz) {
  PGconn *c = begin_locked(dsn, errstr, errsz);
  if (!c)
    return BT_EIO;
  char f[16], t[16];
  snprintf(f, sizeof f, "%d", from);
  snprintf(t, sizeof t, "%d", to);
  const char *v[] = {projection, f, t};
  int rc = exec(c, "switch current",
                "UPDATE projector.current SET version = $3::int WHERE projection = $1 AND "
                "version = $2::int",
                3, v, NULL, errstr, errsz);
  if (!rc)
    rc = exec(c, "switch versions",
              "UPDATE projector.versions SET state = CASE WHEN version = $3::int THEN 'live' "
              "ELSE 'retired' END WHERE projection = $1 AND version IN ($2::int, $3::int)",
              3, v, NULL, errstr, errsz);
  return commit_close(c, rc, errstr, errsz);
}

int proj_schema_drop_version(const char *dsn, const char *projection, int version, char *errstr,
                             size_t errsz) {
  PGconn *c = begin_locked(dsn, errstr, errsz);
  if (!c)
    return BT_EIO;
  char t[300], a[300], sql[700], v[16];
  proj_schema_table(t, sizeof t, projection, version, "");
  proj_schema_table(a, sizeof a, projection, version, "_agg");
  snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s, %s", t, a);
  snprintf(v, sizeof v, "%d", version);
  const char *pv[] = {projection, v};
  int rc = exec(c, "drop tables", sql, 0, NULL, NULL, errstr, errsz);
  if (!rc)
    rc = exec(c, "drop offsets",
              "DELETE FROM projector.offsets WHERE projection = $1 AND version = $2::int", 2, pv,
              NULL, errstr, errsz);
  if (!rc)
    rc = exec(c, "forget version",
              "DELETE FROM projector.versions WHERE projection = $1 AND version = $2::int "
              "AND state = 'retired'",
              2, pv, NULL, errstr, errsz);
  return commit_close(c, rc, errstr, errsz);
}
