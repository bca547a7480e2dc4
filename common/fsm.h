/* bt_fsm_def_t: the one way an object with a lifecycle checks its state changes. A static
 * table lists the legal moves out of each state; bt_fsm_move() refuses anything else with a
 * fatal bug report and keeps one gauge per state (how many objects are in it), as
 * pg_conn.c did first. Objects keep their own typed enum and assign it after the check. */
#ifndef BT_FSM_H
#define BT_FSM_H

#include <stdint.h>

#include "metrics.h"

#define BT_FSM_MAX_STATES 16
#define BT_FSM_BIT(s) (1u << (s))

typedef struct bt_fsm_def {
  const char *kind;                /* "pg conn", for the fatal message */
  unsigned nstates;                /* at most BT_FSM_MAX_STATES */
  const char *const *names;        /* nstates state names, lower case */
  const uint32_t *legal;           /* legal[from]: BT_FSM_BIT() of every allowed next state */
  bt_gauge_t gauges[BT_FSM_MAX_STATES]; /* objects per state; registered by bt_fsm_register */
} bt_fsm_def_t;

/* Registers def's gauges as `metric{state="<name>"}` (metric is borrowed, a literal). Once per
 * process; later calls are no-ops, so several instances of one object may call it. */
void bt_fsm_register(bt_fsm_def_t *def, const char *metric, const char *help);
/* A new object starts in `initial` (counted in its gauge). */
void bt_fsm_enter(bt_fsm_def_t *def, unsigned initial);
/* An object in `state` is gone (uncounted). */
void bt_fsm_leave(bt_fsm_def_t *def, unsigned state);
/* Checks the move from -> to against the table and moves the gauges. An illegal move is a
 * bug: bt_fatal() names the kind, `who` (an id or NULL) and both states. Moving to the same
 * state is legal only if the table says so. */
void bt_fsm_move(bt_fsm_def_t *def, unsigned from, unsigned to, const char *who);
/* The state's name, or "?" when out of range. */
const char *bt_fsm_name(const bt_fsm_def_t *def, unsigned s);

#endif
