/* The event store's schema and its versioned migrations, applied by broker_store_migrate() at
 * start and by `baton-broker migrate` through the runtime's runner (common/pg_migrate.h).
 * Migrations are append-only: a released entry is never edited, a change is a new entry. The
 * gap-safety contract the schema serves is described at the top of store.c. */
#include "broker.h"
#include "pg_migrate.h"
#include "store_schema.h"

/* Every replica that starts takes this transaction-scoped advisory lock before it reads
 * baton.schema_migrations, so N replicas starting together apply each migration exactly once
 * and the others wait, then find nothing left to do. ("baton" in ASCII, then 1.) */
#define MIGRATION_LOCK_KEY "7089075262275584001"

/* The body of migration 3's append_batch() around its duplicate lookup, shared with migration 4
 * (which changes only that lookup), so the function text exists once. */
#define APPEND_BATCH_3_HEAD \
  "  p_streams text[], p_expected bigint[], p_counts int[], p_pkeys text[], p_evapp int[],\n" \
  "  p_ids text[], p_types text[], p_sources text[], p_specversions text[], p_subjects text[],\n" \
  "  p_times text[], p_dctypes text[], p_dataschemas text[], p_data text[],\n" \
  "  p_extensions jsonb[])\n" \
  "RETURNS TABLE (status int, first_version bigint, last_version bigint, \"position\" bigint,\n" \
  "               current_version bigint, stored int)\n" \
  "LANGUAGE plpgsql AS $fn$\n" \
  "DECLARE\n" \
  "  n int := coalesce(cardinality(p_streams), 0);\n" \
  "  r_status int[] := array_fill(0, ARRAY[n]);\n" \
  "  r_first bigint[] := array_fill(0::bigint, ARRAY[n]);\n" \
  "  r_last bigint[] := array_fill(0::bigint, ARRAY[n]);\n" \
  "  r_pos bigint[] := array_fill(0::bigint, ARRAY[n]);\n" \
  "  r_cur bigint[] := array_fill(0::bigint, ARRAY[n]);\n" \
  "  r_stored int[] := array_fill(0, ARRAY[n]);\n" \
  "  v_off int[] := array_fill(0, ARRAY[n]);\n" \
  "  v_new bool[] := array_fill(false, ARRAY[n]);\n" \
  "  v_data bytea[];\n" \
  "  v_hash bytea[];\n" \
  "  i int; k int := 0; s text; cnt int; exp bigint; cur bigint; cur_pk text;\n" \
  "  d_n int; d_first bigint; d_last bigint; d_pos bigint; d_bad int;\n" \
  "  total bigint := 0; pos bigint;\n" \
  "BEGIN\n" \
  "  IF n = 0 THEN RETURN; END IF;\n" \
  "  FOR i IN 1..n LOOP\n" \
  "    v_off[i] := k;\n" \
  "    k := k + p_counts[i];\n" \
  "  END LOOP;\n" \
  /* Each event's data decoded and hashed once, in event order. */ \
  "  SELECT array_agg(ev.d ORDER BY ev.g),\n" \
  "         array_agg(baton.event_hash(ev.t, ev.sv, ev.sj, ev.tm, ev.dct, ev.dsch, ev.d, ev.x)\n" \
  "                   ORDER BY ev.g)\n" \
  "    INTO v_data, v_hash\n" \
  "    FROM (SELECT u.t, u.sv, u.sj, u.tm, u.dct, u.dsch, decode(u.dh, 'hex') AS d, u.x, u.g\n" \
  "          FROM unnest(p_types, p_specversions, p_subjects, p_times, p_dctypes,\n" \
  "                      p_dataschemas, p_data, p_extensions)\n" \
  "               WITH ORDINALITY AS u(t, sv, sj, tm, dct, dsch, dh, x, g)) AS ev;\n" \
  "  FOR i IN SELECT u.ord FROM unnest(p_streams) WITH ORDINALITY AS u(s, ord)\n" \
  "           ORDER BY u.s COLLATE \"C\", u.ord LOOP\n" \
  "    s := p_streams[i]; cnt := p_counts[i]; exp := p_expected[i];\n" \
  "    cur := NULL;\n" \
  "    IF exp <= 0 THEN\n" \
  "      INSERT INTO baton.streams (stream, version, partitionkey) VALUES (s, cnt, p_pkeys[i])\n" \
  "        ON CONFLICT DO NOTHING RETURNING 0 INTO cur;\n" \
  "    END IF;\n" \
  "    IF cur IS NULL THEN\n" \
  "      SELECT t.version, t.partitionkey INTO cur, cur_pk\n" \
  "        FROM baton.streams AS t WHERE t.stream = s FOR UPDATE;\n" \
  "      IF NOT FOUND THEN\n" \
  "        r_status[i] := 2; r_cur[i] := 0;\n" \
  "        CONTINUE;\n" \
  "      END IF;\n" \
  "      d_n := 0; d_bad := NULL;\n" \
  "      IF cur > 0 THEN\n" \
  "        SELECT count(*), min(e.version), max(e.version), max(e.position),\n" \
  "               min(x.g) FILTER (WHERE coalesce(e.payload_hash, baton.event_hash(e.type,\n" \
  "                   e.specversion, e.subject, e.time, e.datacontenttype, e.dataschema,\n" \
  "                   e.data, e.extensions)) <> v_hash[v_off[i] + x.g])\n" \
  "          INTO d_n, d_first, d_last, d_pos, d_bad\n" \
  "          FROM unnest(p_sources[v_off[i] + 1 : v_off[i] + cnt],\n" \
  "                      p_ids[v_off[i] + 1 : v_off[i] + cnt]) WITH ORDINALITY AS x(src, id, g)\n"

#define APPEND_BATCH_3_TAIL \
  "      END IF;\n" \
  "      IF d_bad IS NOT NULL THEN\n" \
  "        r_status[i] := 4; r_cur[i] := cur; r_stored[i] := d_bad - 1;\n" \
  "        CONTINUE;\n" \
  "      ELSIF d_n = cnt THEN\n" \
  "        r_status[i] := 1; r_first[i] := d_first; r_last[i] := d_last; r_pos[i] := d_pos;\n" \
  "        r_cur[i] := cur; r_stored[i] := d_n;\n" \
  "        CONTINUE;\n" \
  "      ELSIF d_n > 0 THEN\n" \
  "        r_status[i] := 3; r_cur[i] := cur; r_stored[i] := d_n;\n" \
  "        CONTINUE;\n" \
  "      ELSIF cur > 0 AND cur_pk IS DISTINCT FROM p_pkeys[i] THEN\n" \
  "        r_status[i] := 5; r_cur[i] := cur;\n" \
  "        CONTINUE;\n" \
  "      ELSIF exp >= 0 AND cur <> exp THEN\n" \
  "        r_status[i] := 2; r_cur[i] := cur;\n" \
  "        CONTINUE;\n" \
  "      END IF;\n" \
  "      UPDATE baton.streams AS t SET version = cur + cnt, partitionkey = p_pkeys[i]\n" \
  "        WHERE t.stream = s;\n" \
  "    END IF;\n" \
  "    v_new[i] := true;\n" \
  "    r_first[i] := cur + 1; r_last[i] := cur + cnt; r_cur[i] := cur + cnt;\n" \
  "    total := total + cnt;\n" \
  "  END LOOP;\n" \
  "  IF total > 0 THEN\n" \
  "    UPDATE baton.positions AS p SET last = p.last + total WHERE p.id = 1\n" \
  "      RETURNING p.last - total INTO pos;\n" \
  "    FOR i IN 1..n LOOP\n" \
  "      IF v_new[i] THEN\n" \
  "        pos := pos + p_counts[i];\n" \
  "        r_pos[i] := pos;\n" \
  "      END IF;\n" \
  "    END LOOP;\n" \
  "    INSERT INTO baton.events (position, stream, version, id, type, source, specversion,\n" \
  "                              subject, time, datacontenttype, dataschema, data, extensions,\n" \
  "                              payload_hash)\n" \
  "    SELECT r_pos[e.a] - r_last[e.a] + r_first[e.a] - 1 + (e.g - v_off[e.a]),\n" \
  "           p_streams[e.a], r_first[e.a] - 1 + (e.g - v_off[e.a]),\n" \
  "           e.id, e.type, e.source, e.specversion, e.subject, e.time, e.dct, e.dsch,\n" \
  "           v_data[e.g], e.ext, v_hash[e.g]\n" \
  "    FROM unnest(p_evapp, p_ids, p_types, p_sources, p_specversions, p_subjects, p_times,\n" \
  "                p_dctypes, p_dataschemas, p_extensions)\n" \
  "         WITH ORDINALITY AS e(a, id, type, source, specversion, subject, time, dct, dsch,\n" \
  "                              ext, g)\n" \
  "    WHERE v_new[e.a];\n" \
  "  END IF;\n" \
  "  RETURN QUERY SELECT * FROM unnest(r_status, r_first, r_last, r_pos, r_cur, r_stored);\n" \
  "END\n"

static const bt_pg_migration_t migrations[] = {
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
    {3, "idempotency on (stream, source, id) with a payload hash; one partition key per stream",
     /* CloudEvents makes (source, id) unique, so the idempotency key becomes (stream, source,
      * id): an event of another source with the same id is a new event, not a "duplicate".
      * payload_hash lets a retry be told from a different event reusing a (source, id) (409
      * id_conflict). Rows written before this migration have no hash; baton.event_hash()
      * computes theirs from the stored columns when they are compared, so nothing is
      * backfilled. The hash covers every attribute except the key itself (source, id). */
     "ALTER TABLE baton.events ADD COLUMN payload_hash bytea;\n"
     "CREATE UNIQUE INDEX events_stream_source_id_key ON baton.events (stream, source, id);\n"
     "ALTER TABLE baton.events DROP CONSTRAINT IF EXISTS events_stream_id_key;\n"
     "CREATE FUNCTION baton.event_hash(p_type text, p_specversion text, p_subject text,\n"
     "  p_time text, p_dct text, p_dsch text, p_data bytea, p_ext jsonb)\n"
     "RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $h$\n"
     "  SELECT sha256(convert_to(jsonb_build_array(p_type, p_specversion, p_subject, p_time,\n"
     "                 p_dct, p_dsch, p_ext, p_data IS NULL)::text, 'UTF8')\n"
     "                || coalesce(sha256(p_data), '\\x'::bytea))\n"
     "$h$;\n"
     /* The relay keys a stream's records by its partitionkey extension, else by the stream id.
      * For a stream to stay in one Kafka partition every event of it must carry the same key,
      * so the stream row remembers the key of its first append (NULL: none, the stream id is
      * the key) and later appends with another one are refused. Streams that exist already take
      * the key of their last event. */
     "ALTER TABLE baton.streams ADD COLUMN partitionkey text;\n"
     "UPDATE baton.streams AS s SET partitionkey = (\n"
     "  SELECT e.extensions->>'partitionkey' FROM baton.events AS e\n"
     "  WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1)\n"
     "WHERE s.version > 0;\n"
     /* append_batch() of migration 2 with:
      *  - p_pkeys: each append's partitionkey (one per append; NULL for none);
      *  - duplicates matched on (source, id) and compared by payload hash;
      *  - status 4 id_conflict: a (source, id) of the append is stored with other content
      *    (`stored` is then the 0-based index of the first such event in the append);
      *  - status 5 partitionkey_conflict: the stream's events carry another partitionkey;
      *  - a numeric expected version on a missing stream answers 2 without writing anything
      *    (migration 2 left an empty stream row behind). No row is needed to wait on: if the
      *    stream is absent from our snapshot, ordering this append before its creator is a
      *    valid history, and the answer "version 0" is true in it.
      * The migration-2 function stays, for replicas of the previous release during a rolling
      * upgrade. The lock order and the gap-safety argument are those of migration 2. */
     "CREATE FUNCTION baton.append_batch(\n"
     APPEND_BATCH_3_HEAD
     "          JOIN baton.events AS e ON e.stream = s AND e.source = x.src AND e.id = x.id;\n"
     APPEND_BATCH_3_TAIL
     "$fn$;\n"},
    {4, "append_batch(): the idempotency check probes (stream, source, id), not the whole stream",
     /* Migration 3's function with one change: its duplicate lookup joined baton.events on
      * (stream, source, id), and the generic plan PL/pgSQL caches for it (the planner takes a
      * stream for one row) used only `stream` as the index condition and filtered the rest,
      * reading every event of the stream on every append to it: an append cost grew with the
      * stream (8 writers on one stream of a few thousand events: ~200 appends/s). The lookup is
      * now a LATERAL subquery per (source, id), which can only be an index probe on all three
      * columns (OFFSET 0 keeps it from being flattened back into the join). Same signature,
      * same results; a replica of the previous release calls the same function. */
     "CREATE OR REPLACE FUNCTION baton.append_batch(\n"
     APPEND_BATCH_3_HEAD
     "          CROSS JOIN LATERAL (SELECT * FROM baton.events AS ev\n"
     "            WHERE ev.stream = s AND ev.source = x.src AND ev.id = x.id OFFSET 0) AS e;\n"
     APPEND_BATCH_3_TAIL
     "$fn$;\n"},
};

static const bt_pg_schema_t schema = {"baton", MIGRATION_LOCK_KEY, "event store", migrations,
                                     BT_ARRAY_LEN(migrations)};

int broker_store_schema_version(void) { return bt_pg_schema_version(&schema); }

int broker_store_migrate(const char *dsn, char *errstr, size_t errsz) {
  return bt_pg_migrate(&schema, dsn, errstr, errsz);
}
