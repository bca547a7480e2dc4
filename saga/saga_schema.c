/* The saga orchestrator's schema. Every table lives in schema `saga`, so the orchestrator can
 * share a database with the broker's `baton` schema; each keeps its own migration ledger and
 * advisory lock. Migrations are append-only: a released entry is never edited.
 *
 * What each table is for, and the transaction that writes it (issue 8 §3, "one transaction per
 * transition"): a transition updates its `sagas` row, appends `history` rows, re-arms `timers`,
 * inserts the command into `outbox` and the consumed reply's key into `replies_seen`, all in
 * one commit; the Kafka offset is committed only after it. */
#include "saga_schema.h"

#include "pg_migrate.h"

/* "saga" in ASCII (0x73616761), then 1: distinct from the broker's key. */
#define SAGA_MIGRATION_LOCK_KEY "1935763297000001"

static const bt_pg_migration_t migrations[] = {
    {1, "sagas, history, timers, reply dedupe, idempotency keys and the outbox",
     /* One row per instance. `plan` is the definition it started with (saga_plan_to_json), so
      * it finishes on that version whatever is loaded later; `cursor` is the rest of the
      * machine's instance (saga_instance_cursor_json). `seq` counts transitions: a transition
      * commits only if seq is still what it read (saga_apply.c), which is how replicas and
      * concurrent requests share a saga without shards and without holding a lock while the
      * machine decides. */
     "CREATE TABLE saga.sagas (\n"
     "  id uuid PRIMARY KEY,\n"
     "  type text NOT NULL,\n"
     "  version int NOT NULL CHECK (version >= 1),\n"
     "  state text NOT NULL CHECK (state IN\n"
     "    ('RUNNING', 'COMPENSATING', 'COMPENSATED', 'COMPLETED', 'FAILED')),\n"
     "  plan jsonb NOT NULL,\n"
     "  cursor jsonb NOT NULL,\n"
     "  input jsonb NOT NULL,\n"
     "  results jsonb NOT NULL DEFAULT '{}',\n"
     "  trace_id text,\n"
     "  seq bigint NOT NULL DEFAULT 0,\n"
     "  created_at timestamptz NOT NULL DEFAULT now(),\n"
     "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
     "  ended_at timestamptz\n"
     ");\n"
     /* GET /v1/sagas?state=&type= pages on (created_at, id); /v1/saga-types counts the live
      * ones per (type, version); the oldest running saga (an alert) reads the partial index. */
     "CREATE INDEX sagas_by_state ON saga.sagas (state, type, created_at, id);\n"
     "CREATE INDEX sagas_by_type ON saga.sagas (type, created_at, id);\n"
     "CREATE INDEX sagas_live ON saga.sagas (type, version, created_at)\n"
     "  WHERE state IN ('RUNNING', 'COMPENSATING', 'FAILED');\n"
     /* Append-only: each command, reply, attempt, timeout, compensation and ignored reply. */
     "CREATE TABLE saga.history (\n"
     "  id bigserial PRIMARY KEY,\n"
     "  saga_id uuid NOT NULL,\n"
     "  at timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
     "  what text NOT NULL,\n"
     "  step int,\n"
     "  step_name text,\n"
     "  attempt int,\n"
     "  kind text CHECK (kind IN ('command', 'compensation')),\n"
     "  detail text,\n"
     "  data jsonb,\n"
     "  trace_id text\n"
     ");\n"
     "CREATE INDEX history_by_saga ON saga.history (saga_id, id);\n"
     /* At most one timer of each kind per saga: arming is an upsert that replaces the previous
      * one, so a stale timer mostly disappears; one that fires anyway is ignored by the
      * machine (it names the step, attempt and kind it was armed for). Replicas claim due
      * timers with SELECT ... WHERE due_at <= now() ORDER BY due_at FOR UPDATE SKIP LOCKED. */
     "CREATE TABLE saga.timers (\n"
     "  saga_id uuid NOT NULL,\n"
     "  timer text NOT NULL CHECK (timer IN ('attempt', 'backoff', 'deadline')),\n"
     "  step int NOT NULL,\n"
     "  attempt int NOT NULL,\n"
     "  kind text NOT NULL CHECK (kind IN ('command', 'compensation')),\n"
     "  due_at timestamptz NOT NULL,\n"
     "  PRIMARY KEY (saga_id, timer)\n"
     ");\n"
     "CREATE INDEX timers_due ON saga.timers (due_at);\n"
     /* The dedupe key of every reply applied or ignored, inserted in the transition's
      * transaction: a reply redelivered after a crash (its offset was not committed yet) finds
      * its key and is never applied twice, whichever transport (Kafka, HTTP) brought it. */
     "CREATE TABLE saga.replies_seen (\n"
     "  saga_id uuid NOT NULL,\n"
     "  step int NOT NULL,\n"
     "  attempt int NOT NULL,\n"
     "  kind text NOT NULL,\n"
     "  outcome text NOT NULL,\n"
     "  seen_at timestamptz NOT NULL DEFAULT now(),\n"
     "  PRIMARY KEY (saga_id, step, attempt, kind)\n"
     ");\n"
     /* Idempotency-Key of POST /v1/sagas/{type}: the same key and body give the same saga, the
      * same key with another body answers 422 (body_sha256 tells them apart). */
     "CREATE TABLE saga.idempotency_keys (\n"
     "  type text NOT NULL,\n"
     "  key text NOT NULL,\n"
     "  body_sha256 text NOT NULL,\n"
     "  saga_id uuid NOT NULL,\n"
     "  created_at timestamptz NOT NULL DEFAULT now(),\n"
     "  PRIMARY KEY (type, key)\n"
     ");\n"
     /* The commands to send, in the exact layout the outbox relay reads (the broker's
      * relay_outbox.c documents it): CloudEvents attributes in columns, ce_ extensions in
      * `extensions`, the record value in `data`. The relay finds it as `outbox` on the
      * search_path: give it a DSN with options=-csearch_path=saga. */
     "CREATE TABLE saga.outbox (\n"
     "  position bigserial PRIMARY KEY,\n"
     "  txid xid8 NOT NULL DEFAULT pg_current_xact_id(),\n"
     "  topic text NOT NULL,\n"
     "  key text,\n"
     "  id text NOT NULL,\n"
     "  type text NOT NULL,\n"
     "  source text NOT NULL,\n"
     "  subject text,\n"
     "  time text,\n"
     "  datacontenttype text,\n"
     "  data bytea,\n"
     "  extensions jsonb,\n"
     "  created_at timestamptz NOT NULL DEFAULT now()\n"
     ");\n"},
    {2, "the outbox relay's leadership lease",
     /* One row: the replica that relays saga.outbox now (common/outbox_relay.h). */
     "CREATE TABLE saga.outbox_lease (name text PRIMARY KEY, holder text, "
     "expires_at timestamptz NOT NULL);\n"
     "INSERT INTO saga.outbox_lease (name, holder, expires_at) VALUES ('commands', NULL, "
     "'epoch');\n"},
};

static const bt_pg_schema_t schema = {"saga", SAGA_MIGRATION_LOCK_KEY, "saga", migrations,
                                     BT_ARRAY_LEN(migrations)};

int saga_schema_version(void) { return bt_pg_schema_version(&schema); }

int saga_schema_migrate(const char *dsn, char *errstr, size_t errsz) {
  return bt_pg_migrate(&schema, dsn, errstr, errsz);
}
