/* saga_apply: one event applied to one persisted saga. Reads the row, lets the machine decide
 * (saga_machine_decide), and commits the transition (saga_txn_t) only if no other transition
 * committed in between: the row's `seq` is checked in the same transaction, and a conflict
 * (another replica or request won) or a reply already seen simply reads again and decides
 * again. This is the engine's one write path; the HTTP replies and operator routes use it now,
 * the Kafka reply consumer and the timer claimer will (Runtime v2 seams). */
#ifndef SAGA_APPLY_H
#define SAGA_APPLY_H

#include <jansson.h>

#include "pg_pool.h"
#include "saga_machine.h"

/* The NOTIFY channel of a saga's end (COMPLETED, COMPENSATED or FAILED); payload: its id. */
#define SAGA_ENDED_CHANNEL "baton_saga_ended"

/* Most read-decide-write rounds for one event before it fails with BT_ECONFLICT. */
#define SAGA_APPLY_MAX_ROUNDS 8

typedef struct saga_apply_result {
  int err;                /* 0; BT_ENOENT no such saga; BT_ECONFLICT too many conflicts; other
                           * BT_E* from Postgres (errmsg says which) */
  const char *errmsg;
  saga_verdict_t verdict; /* when err == 0 */
  const char *reason;     /* ignored or refused: why (borrowed for the callback) */
  saga_state_t state;     /* the saga's state after the event */
  bool paused;
  saga_state_t before;    /* ... and before it */
  uint64_t age_ms;        /* since the saga started */
  uint64_t since_ms;      /* since its previous transition (a step's command, for a reply) */
  const char *saga_id, *type, *trace_id; /* borrowed for the callback; trace_id may be "" */
} saga_apply_result_t;

typedef void (*saga_apply_cb)(const saga_apply_result_t *r, void *arg);

/* A reply that names saga_id but could not be read (why: the parser's message) goes into the
 * saga's history as reply_ignored with detail "malformed: <why>", when that saga exists. It
 * changes nothing else; failures are logged. Returns 0 or the pool's refusal (BT_E*). */
int saga_apply_note_malformed(bt_pg_pool_t *pg, const char *saga_id, const char *where,
                              const char *why);

/* One event for saga_apply_group(); everything is borrowed for the call. */
typedef struct saga_apply_req {
  const char *saga_id;
  saga_event_t ev;
  const char *step_name;
  const json_t *data;
  const char *trace_id;
  saga_apply_cb cb;
  void *arg;
} saga_apply_req_t;

/* Applies ev to saga `saga_id`. For a reply, `step_name` (if not NULL) names the step and
 * overrides ev->step once the plan is read; `data` (borrowed, may be NULL) is the reply's data
 * and `trace_id` (may be NULL) goes into the history. The callback runs once, later, on the
 * loop. Returns 0, or BT_ENOMEM / a pool error without calling back. */
int saga_apply(bt_pg_pool_t *pg, const char *saga_id, const saga_event_t *ev,
               const char *step_name, const json_t *data, const char *trace_id, saga_apply_cb cb,
               void *arg) BT_MUSTCHECK;

/* Group commit: applies n events of different sagas (replies that arrived together) with
 * one read and one transaction. An event whose saga another event of the group already
 * changes runs alone after the group; if any saga of the group moved meanwhile (the seq
 * guard or a dedupe key fails), the whole transaction rolls back and each event is decided
 * again alone, as saga_apply does. Each callback runs once, as for saga_apply. Returns 0, or
 * BT_EINVAL (an id that is not a UUID), BT_ENOMEM or a pool error without calling back. */
int saga_apply_group(bt_pg_pool_t *pg, const saga_apply_req_t *reqs, size_t n) BT_MUSTCHECK;
/* baton_saga_group_commits_total and baton_saga_group_transitions_total. */
void saga_apply_register_metrics(void);

/* Runs fn before every successful callback (err == 0: applied, ignored or refused), so the
 * process nudges its relay after a transition that may have written a command, and counts
 * and logs it. One hook per process; NULL removes it. */
typedef void (*saga_apply_hook)(const saga_apply_result_t *r, const saga_event_t *ev, void *arg);
void saga_apply_on_commit(saga_apply_hook fn, void *arg);

#endif
