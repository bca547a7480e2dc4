/* saga_machine: the saga instance state machine as pure logic. Given the persisted instance
 * and one event (a reply, a timer, an operator action), saga_machine_decide() returns the next
 * instance and the actions the engine must carry out in the same transaction: send a command,
 * arm a timer, store a step's result, write history. It does no I/O and reads no clock, so
 * every rule of issue 8 §3 is tested exhaustively without Kafka or Postgres.
 *
 * Pause is a flag beside the state, not a state: a paused saga is still RUNNING or
 * COMPENSATING (replies are applied, timers fire, the deadline compensates), only the next
 * send is held (wait = SAGA_WAIT_HELD) until resume sends it. */
#ifndef SAGA_MACHINE_H
#define SAGA_MACHINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "fsm.h"
#include "saga_def.h"

typedef enum {
  SAGA_RUNNING,
  SAGA_COMPENSATING,
  SAGA_COMPENSATED,
  SAGA_COMPLETED,
  SAGA_FAILED,
  SAGA_NSTATES
} saga_state_t;

typedef enum { SAGA_KIND_COMMAND, SAGA_KIND_COMPENSATION } saga_kind_t;
typedef enum { SAGA_OUTCOME_SUCCESS, SAGA_OUTCOME_FAILURE, SAGA_OUTCOME_RETRY } saga_outcome_t;

/* What a live instance waits for. */
typedef enum {
  SAGA_WAIT_NONE,     /* COMPLETED or COMPENSATED: nothing */
  SAGA_WAIT_REPLY,    /* (step, attempt, kind) was sent; its attempt timer is armed */
  SAGA_WAIT_BACKOFF,  /* the next attempt goes out when the backoff timer fires */
  SAGA_WAIT_HELD,     /* paused: (step, attempt, kind) goes out on resume */
  SAGA_WAIT_OPERATOR, /* FAILED: an operator retry resumes the compensation */
} saga_wait_t;

/* The persisted instance. Steps are indexes into the plan. Attempt numbers of one (step, kind)
 * only grow, an operator retry included, so a reply to an old attempt can never match. */
typedef struct saga_instance {
  saga_state_t state;
  bool paused;
  saga_wait_t wait;
  uint32_t step;          /* the step being run (RUNNING) or compensated (otherwise) */
  saga_kind_t kind;
  uint32_t attempt;       /* the current attempt of (step, kind), from 1 */
  uint32_t round_first;   /* the first attempt of this round: the retry limit counts from it */
  bool answered;          /* the current attempt's reply was applied */
  bool uncertain;         /* an attempt of the current step timed out: it may have taken effect */
  uint64_t completed;     /* bit i: step i answered success */
  uint64_t to_compensate; /* bit i: step i still to compensate; the highest goes first */
} saga_instance_t;

typedef enum {
  SAGA_EV_START,
  SAGA_EV_REPLY,
  SAGA_EV_ATTEMPT_TIMEOUT, /* the attempt timer of (step, attempt, kind) fired */
  SAGA_EV_BACKOFF_DONE,    /* the backoff timer after (step, attempt, kind) fired */
  SAGA_EV_DEADLINE,        /* the saga's deadline passed */
  SAGA_EV_OP_RETRY,
  SAGA_EV_OP_ABORT,
  SAGA_EV_OP_PAUSE,
  SAGA_EV_OP_RESUME,
} saga_event_type_t;

typedef struct saga_event {
  saga_event_type_t type;
  saga_outcome_t outcome; /* REPLY */
  uint32_t step, attempt; /* REPLY and the step timers */
  saga_kind_t kind;
} saga_event_t;

typedef enum {
  SAGA_ACT_SEND,         /* send (step, attempt, kind); due_ms is the attempt's deadline */
  SAGA_ACT_ARM_TIMER,    /* arm `timer` for (step, attempt, kind) at due_ms */
  SAGA_ACT_STORE_RESULT, /* keep the reply's data as results[<step name>] */
  SAGA_ACT_HISTORY,      /* write a history row: `what`, (step, attempt, kind), `detail` */
} saga_action_type_t;

typedef enum { SAGA_TIMER_ATTEMPT, SAGA_TIMER_BACKOFF, SAGA_TIMER_DEADLINE } saga_timer_t;

typedef struct saga_action {
  saga_action_type_t type;
  uint32_t step, attempt;
  saga_kind_t kind;
  saga_timer_t timer;  /* ARM_TIMER */
  uint64_t due_ms;     /* SEND, ARM_TIMER: absolute, in the clock of `now_ms` */
  const char *what;    /* HISTORY: a stable word (static), see saga_machine.c */
  const char *detail;  /* HISTORY: a reason or NULL (static) */
} saga_action_t;

#define SAGA_MAX_ACTIONS 8

typedef enum {
  SAGA_APPLIED, /* out and the actions are the transition to commit */
  SAGA_IGNORED, /* the event changes nothing (stale, duplicate, late); reason says why. A reply
                 * still gets a history action ("reply_ignored") to commit with its dedupe key */
  SAGA_REFUSED, /* an operator action that does not apply now: answer 409 with reason */
} saga_verdict_t;

typedef struct saga_decision {
  saga_verdict_t verdict;
  const char *reason; /* static; "" when applied */
  char reason_buf[160];
  saga_action_t actions[SAGA_MAX_ACTIONS];
  unsigned nactions;
} saga_decision_t;

/* The transition table (common/fsm.h). Its per-state gauges are not registered: they would
 * count this process's transitions, while sagas live in Postgres and are counted there. */
extern bt_fsm_def_t saga_fsm;

/* Decides the effect of `ev` on `in` under `plan` at time now_ms. *out is always written: a
 * copy of *in unless the verdict is APPLIED. For SAGA_EV_START, `in` is ignored. Backoff delays
 * come from common/backoff.h with the step's jitter setting. */
saga_verdict_t saga_machine_decide(const saga_plan_t *plan, const saga_instance_t *in,
                                   const saga_event_t *ev, uint64_t now_ms, saga_instance_t *out,
                                   saga_decision_t *d);

const char *saga_state_name(saga_state_t s); /* "RUNNING", ... */
int saga_state_parse(const char *s, saga_state_t *out);
const char *saga_kind_name(saga_kind_t k);   /* "command" | "compensation" */
const char *saga_outcome_name(saga_outcome_t o);
bool saga_state_terminal(saga_state_t s);

/* The instance's cursor (everything but `state`, which has its own column) as JSON, and back.
 * from_json returns 0 or BT_EINVAL with a message. */
json_t *saga_instance_cursor_json(const saga_instance_t *in);
int saga_instance_from_cursor(saga_instance_t *in, saga_state_t state, const json_t *cursor,
                              char *err, size_t errsz);

#endif
