/* The saga state machine (see saga_machine.h). Every rule lives in saga_machine_decide() and
 * its helpers; the engine only carries out the actions, in one transaction per decision.
 *
 * Rules (issue 8 §3):
 *  - a `failure` reply to a command compensates at once, without retry, and that step is not
 *    compensated (the participant refused: it did nothing);
 *  - a `retry` reply or an attempt timeout retries with backoff until the step's attempts are
 *    spent, then compensates;
 *  - a step that may have taken effect (an attempt of it timed out, or a command of it is still
 *    out when the deadline or an abort stops the saga) is compensated too;
 *  - compensations run one at a time in reverse step order; the set still to compensate is
 *    persisted, so a crash mid-compensation resumes at the right step;
 *  - a compensation is retried (whatever its reply) up to its own limit, then the saga is
 *    FAILED until an operator retry starts a new round of attempts. */
#include "saga_machine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "errors.h"

static const char *const state_names[SAGA_NSTATES] = {"RUNNING", "COMPENSATING", "COMPENSATED",
                                                      "COMPLETED", "FAILED"};

static const uint32_t legal[SAGA_NSTATES] = {
    [SAGA_RUNNING] = BT_FSM_BIT(SAGA_COMPLETED) | BT_FSM_BIT(SAGA_COMPENSATING),
    [SAGA_COMPENSATING] = BT_FSM_BIT(SAGA_COMPENSATED) | BT_FSM_BIT(SAGA_FAILED),
    [SAGA_FAILED] = BT_FSM_BIT(SAGA_COMPENSATING),
    [SAGA_COMPENSATED] = 0,
    [SAGA_COMPLETED] = 0,
};

bt_fsm_def_t saga_fsm = {
    .kind = "saga",
    .nstates = SAGA_NSTATES,
    .names = state_names,
    .legal = legal,
};

const char *saga_state_name(saga_state_t s) { return bt_fsm_name(&saga_fsm, s); }

int saga_state_parse(const char *s, saga_state_t *out) {
  for (unsigned i = 0; i < SAGA_NSTATES; i++)
    if (strcmp(state_names[i], s) == 0) {
      *out = (saga_state_t)i;
      return 0;
    }
  return BT_EINVAL;
}

const char *saga_kind_name(saga_kind_t k) {
  return k == SAGA_KIND_COMPENSATION ? "compensation" : "command";
}

const char *saga_outcome_name(saga_outcome_t o) {
  return o == SAGA_OUTCOME_SUCCESS ? "success" : o == SAGA_OUTCOME_FAILURE ? "failure" : "retry";
}

bool saga_state_terminal(saga_state_t s) { return s == SAGA_COMPLETED || s == SAGA_COMPENSATED; }

/* ---- decision building blocks ------------------------------------------------------------ */

typedef struct ctx {
  const saga_plan_t *plan;
  saga_instance_t *in;
  saga_decision_t *d;
  uint64_t now;
} ctx_t;

static saga_action_t *act(ctx_t *c, saga_action_type_t type) {
  /* A decision emits at most: history x3, store, send, timer x2; more is a bug in this file. */
  BT_ASSERT(c->d->nactions < SAGA_MAX_ACTIONS);
  saga_action_t *a = &c->d->actions[c->d->nactions++];
  memset(a, 0, sizeof *a);
  a->type = type;
  a->step = c->in->step;
  a->attempt = c->in->attempt;
  a->kind = c->in->kind;
  return a;
}

static void history(ctx_t *c, const char *what, const char *detail) {
  saga_action_t *a = act(c, SAGA_ACT_HISTORY);
  a->what = what;
  a->detail = detail;
}

static void set_state(ctx_t *c, saga_state_t to) {
  bt_fsm_move(&saga_fsm, c->in->state, to, c->plan->name);
  c->in->state = to;
}

static const saga_step_t *cur_step(ctx_t *c) { return &c->plan->steps[c->in->step]; }

static const saga_retry_t *cur_retry(ctx_t *c) {
  return c->in->kind == SAGA_KIND_COMMAND ? &cur_step(c)->retry : &cur_step(c)->comp_retry;
}

/* Sends (step, attempt, kind) now, or holds it while paused. */
static void send_or_hold(ctx_t *c, uint32_t step, saga_kind_t kind, uint32_t attempt) {
  saga_instance_t *in = c->in;
  in->step = step;
  in->kind = kind;
  in->attempt = attempt;
  in->answered = false;
  if (in->paused) {
    in->wait = SAGA_WAIT_HELD;
    history(c, "held", "paused");
    return;
  }
  in->wait = SAGA_WAIT_REPLY;
  uint64_t due = c->now + cur_step(c)->timeout_ms;
  act(c, SAGA_ACT_SEND)->due_ms = due;
  saga_action_t *t = act(c, SAGA_ACT_ARM_TIMER);
  t->timer = SAGA_TIMER_ATTEMPT;
  t->due_ms = due;
  history(c, "sent", NULL);
}

/* A new (step, kind): attempts start at 1. */
static void start_round(ctx_t *c, uint32_t step, saga_kind_t kind) {
  c->in->round_first = 1;
  send_or_hold(c, step, kind, 1);
}

/* Starts the next compensation, or ends COMPENSATED when none is left. */
static void next_compensation(ctx_t *c) {
  saga_instance_t *in = c->in;
  if (in->to_compensate == 0) {
    set_state(c, SAGA_COMPENSATED);
    in->wait = SAGA_WAIT_NONE;
    history(c, "compensated", NULL);
    return;
  }
  uint32_t step = 63u - (uint32_t)__builtin_clzll(in->to_compensate);
  start_round(c, step, SAGA_KIND_COMPENSATION);
}

/* Stops running steps and compensates, in reverse order, every completed step that has a
 * compensation, and the current step too when it may have taken effect. */
static void begin_compensation(ctx_t *c, bool include_current) {
  saga_instance_t *in = c->in;
  uint64_t with_comp = 0;
  for (size_t i = 0; i < c->plan->nsteps; i++)
    if (c->plan->steps[i].compensation)
      with_comp |= 1ull << i;
  in->to_compensate = in->completed;
  if (include_current)
    in->to_compensate |= 1ull << in->step;
  in->to_compensate &= with_comp;
  in->uncertain = false;
  set_state(c, SAGA_COMPENSATING);
  history(c, "compensating", NULL);
  next_compensation(c);
}

static uint64_t backoff_delay(const saga_retry_t *r, uint32_t failures) {
  bt_backoff_t b;
  bt_backoff_init(&b, r->initial_ms, r->backoff == SAGA_BACKOFF_FIXED ? r->initial_ms : r->max_ms,
                  r->jitter);
  b.fails = failures - 1;
  return bt_backoff_next(&b);
}

/* The current attempt did not succeed (a retry reply, a timeout, or a failed compensation):
 * back off and try again, or give up when the round's attempts are spent. */
static void attempt_failed(ctx_t *c) {
  saga_instance_t *in = c->in;
  uint32_t used = in->attempt - in->round_first + 1;
  if (used < cur_retry(c)->max_attempts) {
    in->wait = SAGA_WAIT_BACKOFF;
    saga_action_t *t = act(c, SAGA_ACT_ARM_TIMER);
    t->timer = SAGA_TIMER_BACKOFF;
    t->due_ms = c->now + backoff_delay(cur_retry(c), used);
    return;
  }
  history(c, "attempts_exhausted", NULL);
  if (in->kind == SAGA_KIND_COMMAND) {
    begin_compensation(c, in->uncertain);
  } else {
    set_state(c, SAGA_FAILED);
    in->wait = SAGA_WAIT_OPERATOR;
    history(c, "failed", "compensation attempts exhausted");
  }
}

static void command_succeeded(ctx_t *c) {
  saga_instance_t *in = c->in;
  in->completed |= 1ull << in->step;
  in->uncertain = false;
  act(c, SAGA_ACT_STORE_RESULT);
  if (in->step + 1 == c->plan->nsteps) {
    set_state(c, SAGA_COMPLETED);
    in->wait = SAGA_WAIT_NONE;
    history(c, "completed", NULL);
    return;
  }
  start_round(c, in->step + 1, SAGA_KIND_COMMAND);
}

/* ---- events ------------------------------------------------------------------------------- */

static saga_verdict_t ignore(ctx_t *c, const char *reason) {
  c->d->verdict = SAGA_IGNORED;
  c->d->reason = reason;
  return SAGA_IGNORED;
}

static saga_verdict_t refuse(ctx_t *c, const char *what, const char *applies) {
  snprintf(c->d->reason_buf, sizeof c->d->reason_buf, "%s applies %s; the saga is %s%s", what,
           applies, saga_state_name(c->in->state), c->in->paused ? " (paused)" : "");
  c->d->verdict = SAGA_REFUSED;
  c->d->reason = c->d->reason_buf;
  return SAGA_REFUSED;
}

/* Why a reply that does not match what the saga waits for is ignored. Reasons are stable
 * words: they label the ignored-replies counter. */
static const char *reply_mismatch(const saga_instance_t *in, const saga_event_t *ev) {
  if (saga_state_terminal(in->state))
    return "saga_ended";
  if (ev->step == in->step && ev->kind == in->kind) {
    if (ev->attempt < in->attempt)
      return "stale_attempt";
    if (ev->attempt > in->attempt)
      return "unknown_attempt";
    if (in->answered)
      return "duplicate";
    return "late"; /* the attempt timed out, or it was never sent (held) */
  }
  /* Another step or kind: one the saga has moved past (a command reply while compensating, an
   * earlier step), or one it never sent. */
  bool past = ev->kind == SAGA_KIND_COMMAND ? (in->kind == SAGA_KIND_COMPENSATION ||
                                               ev->step < in->step)
                                            : (in->kind == SAGA_KIND_COMPENSATION && ev->step > in->step);
  return past ? "stale_step" : "unknown_step";
}

static saga_verdict_t on_reply(ctx_t *c, const saga_event_t *ev, const saga_instance_t *orig) {
  saga_instance_t *in = c->in;
  if (in->wait != SAGA_WAIT_REPLY || ev->step != in->step || ev->kind != in->kind ||
      ev->attempt != in->attempt) {
    const char *why = ev->step >= c->plan->nsteps ? "unknown_step" : reply_mismatch(orig, ev);
    history(c, "reply_ignored", why);
    c->d->actions[c->d->nactions - 1].step = ev->step;
    c->d->actions[c->d->nactions - 1].attempt = ev->attempt;
    c->d->actions[c->d->nactions - 1].kind = ev->kind;
    return ignore(c, why);
  }
  in->answered = true;
  if (in->kind == SAGA_KIND_COMMAND) {
    switch (ev->outcome) {
    case SAGA_OUTCOME_SUCCESS:
      history(c, "succeeded", NULL);
      command_succeeded(c);
      break;
    case SAGA_OUTCOME_FAILURE:
      history(c, "refused", NULL);
      begin_compensation(c, false);
      break;
    case SAGA_OUTCOME_RETRY:
      history(c, "retry_requested", NULL);
      attempt_failed(c);
      break;
    }
    return SAGA_APPLIED;
  }
  if (ev->outcome == SAGA_OUTCOME_SUCCESS) {
    history(c, "undone", NULL);
    in->to_compensate &= ~(1ull << in->step);
    next_compensation(c);
  } else {
    history(c, ev->outcome == SAGA_OUTCOME_FAILURE ? "undo_failed" : "retry_requested", NULL);
    attempt_failed(c);
  }
  return SAGA_APPLIED;
}

static bool timer_matches(const saga_instance_t *in, const saga_event_t *ev, saga_wait_t wait) {
  return in->wait == wait && ev->step == in->step && ev->kind == in->kind &&
         ev->attempt == in->attempt;
}

static saga_verdict_t decide(ctx_t *c, const saga_event_t *ev, const saga_instance_t *orig) {
  saga_instance_t *in = c->in;
  switch (ev->type) {
  case SAGA_EV_START:
    memset(in, 0, sizeof *in);
    in->state = SAGA_RUNNING;
    history(c, "started", NULL);
    if (c->plan->deadline_ms) {
      saga_action_t *t = act(c, SAGA_ACT_ARM_TIMER);
      t->timer = SAGA_TIMER_DEADLINE;
      t->step = 0;
      t->attempt = 0;
      t->due_ms = c->now + c->plan->deadline_ms;
    }
    start_round(c, 0, SAGA_KIND_COMMAND);
    return SAGA_APPLIED;
  case SAGA_EV_REPLY:
    return on_reply(c, ev, orig);
  case SAGA_EV_ATTEMPT_TIMEOUT:
    if (!timer_matches(in, ev, SAGA_WAIT_REPLY))
      return ignore(c, "stale_timer");
    if (in->kind == SAGA_KIND_COMMAND)
      in->uncertain = true;
    history(c, "timed_out", NULL);
    attempt_failed(c);
    return SAGA_APPLIED;
  case SAGA_EV_BACKOFF_DONE:
    if (!timer_matches(in, ev, SAGA_WAIT_BACKOFF))
      return ignore(c, "stale_timer");
    send_or_hold(c, in->step, in->kind, in->attempt + 1);
    return SAGA_APPLIED;
  case SAGA_EV_DEADLINE:
  case SAGA_EV_OP_ABORT:
    if (in->state != SAGA_RUNNING) {
      if (ev->type == SAGA_EV_DEADLINE)
        return ignore(c, "deadline_after_running");
      return refuse(c, "abort", "to a RUNNING saga");
    }
    history(c, ev->type == SAGA_EV_DEADLINE ? "deadline_passed" : "aborted", NULL);
    /* A command still out may have taken effect: compensate its step too. */
    begin_compensation(c, in->uncertain || in->wait == SAGA_WAIT_REPLY);
    return SAGA_APPLIED;
  case SAGA_EV_OP_RETRY:
    if (in->state != SAGA_FAILED)
      return refuse(c, "retry", "to a FAILED saga");
    set_state(c, SAGA_COMPENSATING);
    history(c, "operator_retry", NULL);
    in->round_first = in->attempt + 1;
    send_or_hold(c, in->step, SAGA_KIND_COMPENSATION, in->attempt + 1);
    return SAGA_APPLIED;
  case SAGA_EV_OP_PAUSE:
    if ((in->state != SAGA_RUNNING && in->state != SAGA_COMPENSATING) || in->paused)
      return refuse(c, "pause", "to a RUNNING or COMPENSATING saga that is not paused");
    in->paused = true;
    history(c, "paused", NULL);
    return SAGA_APPLIED;
  case SAGA_EV_OP_RESUME:
    if (!in->paused)
      return refuse(c, "resume", "to a paused saga");
    in->paused = false;
    history(c, "resumed", NULL);
    if (in->wait == SAGA_WAIT_HELD)
      send_or_hold(c, in->step, in->kind, in->attempt);
    return SAGA_APPLIED;
  }
  bt_fatal("saga %s: unknown event %d", c->plan->name, (int)ev->type);
}

saga_verdict_t saga_machine_decide(const saga_plan_t *plan, const saga_instance_t *in,
                                   const saga_event_t *ev, uint64_t now_ms, saga_instance_t *out,
                                   saga_decision_t *d) {
  memset(d, 0, sizeof *d);
  d->reason = "";
  saga_instance_t orig = {0};
  if (ev->type != SAGA_EV_START)
    orig = *in;
  *out = orig;
  ctx_t c = {plan, out, d, now_ms};
  saga_verdict_t v = decide(&c, ev, &orig);
  if (v != SAGA_APPLIED) {
    /* Nothing changes; an ignored reply keeps only its history row. */
    *out = orig;
    if (v == SAGA_REFUSED)
      d->nactions = 0;
  }
  d->verdict = v;
  return v;
}

/* ---- persistence of the cursor ----------------------------------------------------------- */

static const char *const wait_names[] = {"none", "reply", "backoff", "held", "operator"};

json_t *saga_instance_cursor_json(const saga_instance_t *in) {
  /* The bit sets are strings: JSON numbers above 2^53 do not survive every reader. */
  char done[24], todo[24];
  snprintf(done, sizeof done, "%llu", (unsigned long long)in->completed);
  snprintf(todo, sizeof todo, "%llu", (unsigned long long)in->to_compensate);
  return json_pack("{s:b, s:s, s:I, s:s, s:I, s:I, s:b, s:b, s:s, s:s}", "paused", in->paused,
                   "wait", wait_names[in->wait], "step", (json_int_t)in->step, "kind",
                   saga_kind_name(in->kind), "attempt", (json_int_t)in->attempt, "round_first",
                   (json_int_t)in->round_first, "answered", in->answered, "uncertain",
                   in->uncertain, "completed", done, "to_compensate", todo);
}

int saga_instance_from_cursor(saga_instance_t *in, saga_state_t state, const json_t *cursor,
                              char *err, size_t errsz) {
  int paused, answered, uncertain;
  const char *wait, *kind, *done, *todo;
  json_int_t step, attempt, round_first;
  json_error_t je;
  if (json_unpack_ex((json_t *)cursor, &je, 0, "{s:b, s:s, s:I, s:s, s:I, s:I, s:b, s:b, s:s, s:s}",
                     "paused", &paused, "wait", &wait, "step", &step, "kind", &kind, "attempt",
                     &attempt, "round_first", &round_first, "answered", &answered, "uncertain",
                     &uncertain, "completed", &done, "to_compensate", &todo) != 0) {
    snprintf(err, errsz, "stored saga cursor: %s", je.text);
    return BT_EINVAL;
  }
  memset(in, 0, sizeof *in);
  unsigned w = 0;
  while (w < BT_ARRAY_LEN(wait_names) && strcmp(wait_names[w], wait) != 0)
    w++;
  if (w == BT_ARRAY_LEN(wait_names) || step < 0 || step >= SAGA_MAX_STEPS || attempt < 0 ||
      round_first < 0 || (strcmp(kind, "command") != 0 && strcmp(kind, "compensation") != 0)) {
    snprintf(err, errsz, "stored saga cursor: bad wait, step, attempt or kind");
    return BT_EINVAL;
  }
  in->state = state;
  in->paused = paused;
  in->wait = (saga_wait_t)w;
  in->step = (uint32_t)step;
  in->kind = strcmp(kind, "command") == 0 ? SAGA_KIND_COMMAND : SAGA_KIND_COMPENSATION;
  in->attempt = (uint32_t)attempt;
  in->round_first = (uint32_t)round_first;
  in->answered = answered;
  in->uncertain = uncertain;
  in->completed = strtoull(done, NULL, 10);
  in->to_compensate = strtoull(todo, NULL, 10);
  return 0;
}
