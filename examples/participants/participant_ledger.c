/* The ledger of a participant: one Postgres schema per role (inventory, payment, shipping),
 * holding every command id received and the effect it had. It is the tests' oracle ("each
 * effect applied exactly once per saga", "compensations exactly for the failed sagas"), so its
 * rules live in the database, in one function that runs as one transaction per command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "participant.h"
#include "pg_migrate.h"

/* "{s}" stands for the schema. The rules, in the order the function applies them:
 *  - a command id seen before (Kafka redelivered it after a crash, or a relay duplicated it)
 *    changes nothing and is answered as the first time;
 *  - a command whose step was already decided under another attempt (the engine retried after
 *    a timeout, the first reply was lost or late) is decided again the same way: answered
 *    with the first result, or the first refusal, and not applied again ("replayed");
 *  - a command arriving after its step's compensation is refused, so a late command can never
 *    apply an effect that was already undone;
 *  - a compensation undoes the applied effect once; a compensation of a step never applied is
 *    a no-op that still succeeds ("nothing to undo", issue 8 §3);
 *  - a compensation whose `results` carry something else than what the step returned (say,
 *    VoidPayment without AuthorizePayment's authorization id) is refused: that would be an
 *    orchestrator bug, and a refusal makes it visible.
 * The partial unique index is the last line of defence: two replicas racing on one step make
 * one transaction fail (and retry), never two effects. */
static const char schema_sql[] =
    "CREATE TABLE {s}.ledger (\n"
    "  id bigserial PRIMARY KEY,\n"
    "  saga_id text NOT NULL,\n"
    "  step text NOT NULL,\n"
    "  attempt int NOT NULL,\n"
    "  kind text NOT NULL CHECK (kind IN ('command', 'compensation')),\n"
    "  command_id text NOT NULL UNIQUE,\n"
    "  type text NOT NULL,\n"
    "  effect text NOT NULL CHECK (effect IN ('applied', 'replayed', 'refused', 'noop')),\n"
    "  outcome text NOT NULL CHECK (outcome IN ('success', 'failure', 'retry')),\n"
    "  result jsonb,\n"
    "  received jsonb,\n"
    "  answered boolean NOT NULL,\n"
    "  applied_at timestamptz NOT NULL DEFAULT clock_timestamp()\n"
    ");\n"
    "CREATE UNIQUE INDEX ledger_effect_once ON {s}.ledger (saga_id, step, kind)\n"
    "  WHERE effect = 'applied';\n"
    "CREATE INDEX ledger_by_saga ON {s}.ledger (saga_id, step, kind);\n"
    "CREATE FUNCTION {s}.apply(p_saga text, p_step text, p_attempt int, p_kind text,\n"
    "    p_command_id text, p_type text, p_want text, p_result jsonb, p_received jsonb,\n"
    "    p_answer boolean)\n"
    "  RETURNS TABLE (outcome text, result jsonb, effect text, answered boolean,\n"
    "                 duplicate boolean)\n"
    "  LANGUAGE plpgsql AS $f$\n"
    "DECLARE\n"
    "  prev {s}.ledger%ROWTYPE;\n"
    "  v_effect text; v_outcome text; v_result jsonb;\n"
    "BEGIN\n"
    "  SELECT * INTO prev FROM {s}.ledger l WHERE l.command_id = p_command_id;\n"
    "  IF FOUND THEN\n"
    "    RETURN QUERY SELECT prev.outcome, prev.result, prev.effect, prev.answered, true;\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  IF p_kind = 'command' THEN\n"
    "    SELECT * INTO prev FROM {s}.ledger l WHERE l.saga_id = p_saga AND l.step = p_step\n"
    "      AND l.kind = 'command' AND l.effect IN ('applied', 'refused')\n"
    "      ORDER BY l.effect = 'applied' DESC, l.id LIMIT 1;\n"
    "    IF FOUND THEN\n"
    "      v_effect := 'replayed'; v_outcome := prev.outcome; v_result := prev.result;\n"
    "    ELSIF EXISTS (SELECT 1 FROM {s}.ledger l WHERE l.saga_id = p_saga AND l.step = p_step\n"
    "                  AND l.kind = 'compensation') THEN\n"
    "      v_effect := 'refused'; v_outcome := 'failure';\n"
    "      v_result := '{\"error\":\"compensated_before_applied\"}';\n"
    "    ELSIF p_want = 'success' THEN\n"
    "      v_effect := 'applied'; v_outcome := 'success'; v_result := p_result;\n"
    "    ELSE\n"
    "      v_effect := 'refused'; v_outcome := p_want; v_result := p_result;\n"
    "    END IF;\n"
    "  ELSE\n"
    "    SELECT * INTO prev FROM {s}.ledger l WHERE l.saga_id = p_saga AND l.step = p_step\n"
    "      AND l.kind = 'compensation' AND l.effect IN ('applied', 'noop');\n"
    "    IF FOUND THEN\n"
    "      v_effect := 'replayed'; v_outcome := prev.outcome; v_result := prev.result;\n"
    "    ELSIF p_want <> 'success' THEN\n"
    "      v_effect := 'refused'; v_outcome := p_want; v_result := p_result;\n"
    "    ELSE\n"
    "      SELECT * INTO prev FROM {s}.ledger l WHERE l.saga_id = p_saga AND l.step = p_step\n"
    "        AND l.kind = 'command' AND l.effect = 'applied';\n"
    "      IF NOT FOUND THEN\n"
    "        v_effect := 'noop'; v_outcome := 'success';\n"
    "        v_result := '{\"undone\":null}';\n"
    "      ELSIF p_received IS NOT NULL AND p_received IS DISTINCT FROM prev.result THEN\n"
    "        v_effect := 'refused'; v_outcome := 'failure';\n"
    "        v_result := jsonb_build_object('error', 'results_mismatch', 'expected',\n"
    "                                       prev.result, 'received', p_received);\n"
    "      ELSE\n"
    "        v_effect := 'applied'; v_outcome := 'success';\n"
    "        v_result := jsonb_build_object('undone', prev.result);\n"
    "      END IF;\n"
    "    END IF;\n"
    "  END IF;\n"
    "  INSERT INTO {s}.ledger (saga_id, step, attempt, kind, command_id, type, effect,\n"
    "                          outcome, result, received, answered)\n"
    "    VALUES (p_saga, p_step, p_attempt, p_kind, p_command_id, p_type, v_effect,\n"
    "            v_outcome, v_result, p_received, p_answer);\n"
    "  RETURN QUERY SELECT v_outcome, v_result, v_effect, p_answer, false;\n"
    "END $f$;\n";

/* The template with every "{s}" replaced by the schema name (a plain identifier). */
static char *expand(const char *tmpl, const char *schema) {
  size_t slen = strlen(schema), n = 0, cap = strlen(tmpl) * 2 + 1;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  for (const char *s = tmpl; *s;) {
    if (n + slen + 1 >= cap) {
      char *bigger = realloc(out, cap *= 2);
      if (!bigger) {
        free(out);
        return NULL;
      }
      out = bigger;
    }
    if (strncmp(s, "{s}", 3) == 0) {
      memcpy(out + n, schema, slen);
      n += slen;
      s += 3;
    } else {
      out[n++] = *s++;
    }
  }
  out[n] = '\0';
  return out;
}

void participant_ledger_init(participant_t *p) {
  snprintf(p->sql_apply, sizeof p->sql_apply,
           "SELECT outcome, result::text, effect, answered, duplicate FROM %s.apply("
           "$1, $2, $3::int, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10::boolean)",
           p->role->name);
}

int participant_ledger_migrate(participant_t *p, char *errstr, size_t errsz) {
  const char *schema = p->role->name;
  char *sql = expand(schema_sql, schema);
  if (!sql) {
    snprintf(errstr, errsz, "out of memory");
    return BT_EIO;
  }
  const bt_pg_migration_t migrations[] = {
      {1, "the ledger of commands and effects, and its apply function", sql},
  };
  const bt_pg_schema_t s = {schema, p->role->lock_key, schema, migrations,
                            BT_ARRAY_LEN(migrations)};
  int rc = bt_pg_migrate(&s, p->cfg.pg_dsn, errstr, errsz);
  free(sql);
  return rc;
}
