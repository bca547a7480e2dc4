/* saga_txn_t: the statements of one saga transition, built from a machine decision so that
 * the saga row, its history rows, its timers, the command in the outbox (and, for a reply,
 * its dedupe key) commit together in one bt_pg_pool_batch() (issue 8 §3). Start and, later,
 * the engine's reply and timer paths all write through it. */
#ifndef SAGA_TXN_H
#define SAGA_TXN_H

#include <jansson.h>
#include <stdint.h>

#include "pg_pool.h"
#include "saga_machine.h"
#include "saga_wire.h"

#define SAGA_TXN_MAX_STMTS 16
#define SAGA_TXN_MAX_PARAMS 14

typedef struct saga_txn {
  bt_pg_stmt_t stmts[SAGA_TXN_MAX_STMTS];
  size_t n;
  const char *vals[SAGA_TXN_MAX_STMTS][SAGA_TXN_MAX_PARAMS];
  char *owned[SAGA_TXN_MAX_STMTS * SAGA_TXN_MAX_PARAMS]; /* parameter strings we allocated */
  size_t nowned;
} saga_txn_t;

/* What a transition is about. Borrowed. */
typedef struct saga_txn_ctx {
  const char *saga_id;
  const saga_plan_t *plan;
  const json_t *input, *results; /* for the commands' values */
  const json_t *reply_data;      /* STORE_RESULT's data, or NULL */
  const char *traceparent;       /* carried into commands, or NULL */
  const char *trace_id;          /* written in history rows, or NULL */
  uint64_t now_unix_ms;
} saga_txn_ctx_t;

void saga_txn_init(saga_txn_t *t);
void saga_txn_free(saga_txn_t *t);
/* INSERT of a new saga row in state `in` (a START decision's result). */
int saga_txn_insert_saga(saga_txn_t *t, const saga_txn_ctx_t *c, const saga_instance_t *in)
    BT_MUSTCHECK;
/* INSERT of an Idempotency-Key for the saga; a concurrent start with the same key makes the
 * batch fail with SQLSTATE 23505 (unique_violation), and the caller looks the key up again.
 * `body` is the raw request body; Postgres stores its SHA-256. */
int saga_txn_idempotency_key(saga_txn_t *t, const saga_txn_ctx_t *c, const char *key,
                             const char *body) BT_MUSTCHECK;
/* The statements of every action of d. Returns 0, BT_ERANGE when the transaction would exceed
 * SAGA_TXN_MAX_STMTS, or BT_EINVAL with a message (a command that cannot be encoded). */
int saga_txn_add_actions(saga_txn_t *t, const saga_txn_ctx_t *c, const saga_decision_t *d,
                         char *err, size_t errsz) BT_MUSTCHECK;

#endif
