/* The saga state machine, exhaustively: the happy path; a failure at each step compensates
 * exactly the earlier steps in reverse order; retries and timeouts with backoff, a timed-out
 * step compensated too; compensation failures -> FAILED -> operator retry; stale, duplicate
 * and late replies ignored with their reason; every illegal operator action refused with the
 * current state; pause holds sends; the deadline compensates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "saga_machine.h"
#include "testsupport.h"

/* Four steps: a, b (no compensation), c, d (last, no compensation possible). */
static const char *plan_yaml =
    "saga: t\nversion: 1\ndeadline: 60s\nsteps:\n"
    "  - { name: a, topic: a.c, command: DoA, compensation: UndoA, timeout: 1s,"
    "      retry: { max_attempts: 3, backoff: exponential, initial: 100ms, max: 1s, jitter: false },"
    "      compensation_retry: { max_attempts: 2, backoff: fixed, initial: 50ms, jitter: false } }\n"
    "  - { name: b, topic: b.c, command: DoB, timeout: 1s }\n"
    "  - { name: c, topic: c.c, command: DoC, compensation: UndoC, timeout: 2s,"
    "      retry: { max_attempts: 2, backoff: fixed, initial: 300ms, jitter: false } }\n"
    "  - { name: d, topic: d.c, command: DoD, timeout: 1s }\n";

static saga_defs_t defs;
static const saga_plan_t *plan;

static int setup(void **state) {
  char *errs = NULL;
  if (saga_defs_load_text(&defs, "t.yaml", plan_yaml, strlen(plan_yaml), &errs) != 0)
    fail_msg("%s", errs);
  plan = defs.plans[0];
  return 0;
}

static int teardown(void **state) {
  saga_defs_free(&defs);
  return 0;
}

/* A driven saga: the instance, the clock, and a log of every send "C0.1" (command step 0
 * attempt 1) or "U2.1" (compensation of step 2, attempt 1), space-separated. */
typedef struct run {
  saga_instance_t in;
  uint64_t now;
  char sends[1024];
  saga_decision_t last;
  unsigned stored; /* STORE_RESULT actions */
  uint64_t backoff_due, attempt_due;
} run_t;

static saga_verdict_t feed(run_t *r, saga_event_t ev) {
  saga_instance_t out;
  saga_verdict_t v = saga_machine_decide(plan, &r->in, &ev, r->now, &out, &r->last);
  for (unsigned i = 0; i < r->last.nactions; i++) {
    const saga_action_t *a = &r->last.actions[i];
    if (a->type == SAGA_ACT_SEND)
      snprintf(r->sends + strlen(r->sends), sizeof r->sends - strlen(r->sends), "%s%c%u.%u",
               r->sends[0] ? " " : "", a->kind == SAGA_KIND_COMMAND ? 'C' : 'U', a->step,
               a->attempt);
    if (a->type == SAGA_ACT_STORE_RESULT)
      r->stored++;
    if (a->type == SAGA_ACT_ARM_TIMER && a->timer == SAGA_TIMER_BACKOFF)
      r->backoff_due = a->due_ms;
    if (a->type == SAGA_ACT_ARM_TIMER && a->timer == SAGA_TIMER_ATTEMPT)
      r->attempt_due = a->due_ms;
  }
  r->in = out;
  return v;
}

static void start(run_t *r) {
  memset(r, 0, sizeof *r);
  r->now = 1000000;
  assert_int_equal(feed(r, (saga_event_t){.type = SAGA_EV_START}), SAGA_APPLIED);
}

/* A reply to what the saga waits for now. */
static saga_verdict_t reply(run_t *r, saga_outcome_t o) {
  return feed(r, (saga_event_t){SAGA_EV_REPLY, o, r->in.step, r->in.attempt, r->in.kind});
}

static saga_verdict_t timeout(run_t *r) {
  return feed(r, (saga_event_t){SAGA_EV_ATTEMPT_TIMEOUT, 0, r->in.step, r->in.attempt, r->in.kind});
}

static saga_verdict_t backoff_done(run_t *r) {
  return feed(r, (saga_event_t){SAGA_EV_BACKOFF_DONE, 0, r->in.step, r->in.attempt, r->in.kind});
}

static saga_verdict_t op(run_t *r, saga_event_type_t t) {
  return feed(r, (saga_event_t){.type = t});
}

/* Field by field: struct copies do not keep padding bytes. */
static void assert_same_instance(const saga_instance_t *a, const saga_instance_t *b) {
  assert_int_equal(a->state, b->state);
  assert_int_equal(a->paused, b->paused);
  assert_int_equal(a->wait, b->wait);
  assert_int_equal(a->step, b->step);
  assert_int_equal(a->kind, b->kind);
  assert_int_equal(a->attempt, b->attempt);
  assert_int_equal(a->round_first, b->round_first);
  assert_int_equal(a->answered, b->answered);
  assert_int_equal(a->uncertain, b->uncertain);
  assert_int_equal(a->completed, b->completed);
  assert_int_equal(a->to_compensate, b->to_compensate);
}

static bool has_history(const saga_decision_t *d, const char *what) {
  for (unsigned i = 0; i < d->nactions; i++)
    if (d->actions[i].type == SAGA_ACT_HISTORY && strcmp(d->actions[i].what, what) == 0)
      return true;
  return false;
}

static void test_happy_path(void **state) {
  run_t r;
  start(&r);
  assert_true(has_history(&r.last, "started"));
  /* The deadline timer and the first attempt's timer are armed with the start. */
  assert_int_equal(r.last.actions[1].type, SAGA_ACT_ARM_TIMER);
  assert_int_equal(r.last.actions[1].timer, SAGA_TIMER_DEADLINE);
  assert_int_equal(r.last.actions[1].due_ms, r.now + 60000);
  assert_int_equal(r.attempt_due, r.now + 1000);
  for (int i = 0; i < 4; i++)
    assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 C3.1");
  assert_int_equal(r.in.state, SAGA_COMPLETED);
  assert_int_equal(r.in.wait, SAGA_WAIT_NONE);
  assert_int_equal(r.stored, 4);
  assert_true(has_history(&r.last, "completed"));
}

/* A failure at step k compensates exactly the earlier steps that have a compensation, in
 * reverse order, and never step k itself. */
static void test_failure_at_each_step(void **state) {
  const char *want[] = {
      "C0.1",                              /* fails at a: nothing to undo */
      "C0.1 C1.1 U0.1",                    /* fails at b: undo a */
      "C0.1 C1.1 C2.1 U0.1",               /* fails at c: b has no compensation, c refused */
      "C0.1 C1.1 C2.1 C3.1 U2.1 U0.1",     /* fails at d: undo c, then a */
  };
  for (uint32_t k = 0; k < 4; k++) {
    run_t r;
    start(&r);
    for (uint32_t i = 0; i < k; i++)
      assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
    assert_int_equal(reply(&r, SAGA_OUTCOME_FAILURE), SAGA_APPLIED);
    assert_true(has_history(&r.last, "refused"));
    while (r.in.state == SAGA_COMPENSATING)
      assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
    assert_int_equal(r.in.state, SAGA_COMPENSATED);
    if (strcmp(r.sends, want[k]) != 0)
      fail_msg("failure at step %u: sent \"%s\", want \"%s\"", k, r.sends, want[k]);
  }
}

static void test_retry_with_backoff_then_success(void **state) {
  run_t r;
  start(&r);
  assert_int_equal(reply(&r, SAGA_OUTCOME_RETRY), SAGA_APPLIED);
  assert_int_equal(r.in.wait, SAGA_WAIT_BACKOFF);
  assert_int_equal(r.backoff_due, r.now + 100); /* exponential from 100ms, no jitter */
  assert_int_equal(backoff_done(&r), SAGA_APPLIED);
  assert_int_equal(timeout(&r), SAGA_APPLIED);
  assert_int_equal(r.backoff_due, r.now + 200); /* doubled */
  assert_int_equal(backoff_done(&r), SAGA_APPLIED);
  assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
  assert_string_equal(r.sends, "C0.1 C0.2 C0.3 C1.1");
  assert_int_equal(r.in.state, SAGA_RUNNING);
}

/* Step c times out on both attempts: it is compensated (its outcome is unknown), then a. */
static void test_timeout_exhausted_compensates_the_timed_out_step(void **state) {
  run_t r;
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(timeout(&r), SAGA_APPLIED);
  assert_true(has_history(&r.last, "timed_out"));
  assert_int_equal(r.backoff_due, r.now + 300); /* fixed */
  backoff_done(&r);
  assert_int_equal(timeout(&r), SAGA_APPLIED);
  assert_true(has_history(&r.last, "attempts_exhausted"));
  assert_int_equal(r.in.state, SAGA_COMPENSATING);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 C2.2 U2.1 U0.1");
}

/* Step c answers retry on both attempts (never timed out): it did nothing, so only a is undone. */
static void test_retry_exhausted_does_not_compensate_the_step(void **state) {
  run_t r;
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_RETRY);
  backoff_done(&r);
  reply(&r, SAGA_OUTCOME_RETRY);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 C2.2 U0.1");
}

/* A compensation that keeps failing leaves the saga FAILED; an operator retry starts a new
 * round with higher attempt numbers and the saga then compensates to the end. */
static void test_compensation_failure_then_operator_retry(void **state) {
  run_t r;
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_FAILURE); /* d refused: undo c, then a */
  reply(&r, SAGA_OUTCOME_SUCCESS); /* c undone */
  assert_int_equal(reply(&r, SAGA_OUTCOME_FAILURE), SAGA_APPLIED); /* undo a fails: retried */
  assert_int_equal(r.in.wait, SAGA_WAIT_BACKOFF);
  assert_int_equal(r.backoff_due, r.now + 50);
  backoff_done(&r);
  assert_int_equal(timeout(&r), SAGA_APPLIED); /* second and last attempt */
  assert_int_equal(r.in.state, SAGA_FAILED);
  assert_int_equal(r.in.wait, SAGA_WAIT_OPERATOR);
  assert_true(has_history(&r.last, "failed"));
  /* Replies and timers do nothing now. */
  assert_int_equal(timeout(&r), SAGA_IGNORED);
  assert_int_equal(op(&r, SAGA_EV_OP_RETRY), SAGA_APPLIED);
  assert_int_equal(r.in.state, SAGA_COMPENSATING);
  /* A late reply to the old round's attempt 2 cannot complete the new round. */
  assert_int_equal(feed(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 0, 2,
                                           SAGA_KIND_COMPENSATION}),
                   SAGA_IGNORED);
  assert_string_equal(r.last.reason, "stale_attempt");
  /* The new round has its own two attempts. */
  reply(&r, SAGA_OUTCOME_RETRY);
  backoff_done(&r);
  assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 C3.1 U2.1 U0.1 U0.2 U0.3 U0.4");
}

static void expect_ignored(run_t *r, saga_event_t ev, const char *reason) {
  saga_instance_t before = r->in;
  assert_int_equal(feed(r, ev), SAGA_IGNORED);
  assert_string_equal(r->last.reason, reason);
  assert_same_instance(&before, &r->in);
  /* The ignored reply is recorded in the history with its own ids and reason. */
  assert_int_equal(r->last.nactions, 1);
  assert_string_equal(r->last.actions[0].what, "reply_ignored");
  assert_string_equal(r->last.actions[0].detail, reason);
  assert_int_equal(r->last.actions[0].attempt, ev.attempt);
}

static void test_stale_duplicate_late_replies(void **state) {
  run_t r;
  start(&r);
  saga_event_t a1 = {SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 0, 1, SAGA_KIND_COMMAND};
  timeout(&r); /* attempt 1 of a timed out: its reply is late */
  expect_ignored(&r, a1, "late");
  backoff_done(&r);
  expect_ignored(&r, a1, "stale_attempt");
  saga_event_t a2 = {SAGA_EV_REPLY, SAGA_OUTCOME_RETRY, 0, 2, SAGA_KIND_COMMAND};
  assert_int_equal(feed(&r, a2), SAGA_APPLIED);
  expect_ignored(&r, a2, "duplicate");
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 0, 9, SAGA_KIND_COMMAND},
                 "unknown_attempt");
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 2, 1, SAGA_KIND_COMMAND},
                 "unknown_step");
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 77, 1, SAGA_KIND_COMMAND},
                 "unknown_step");
  backoff_done(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  expect_ignored(&r, a2, "stale_step");
  reply(&r, SAGA_OUTCOME_FAILURE); /* b refused: compensate a */
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 1, 1, SAGA_KIND_COMMAND},
                 "stale_step");
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 0, 1,
                                     SAGA_KIND_COMPENSATION},
                 "saga_ended");
}

static void test_stale_timers_ignored(void **state) {
  run_t r;
  start(&r);
  saga_event_t t1 = {SAGA_EV_ATTEMPT_TIMEOUT, 0, 0, 1, SAGA_KIND_COMMAND};
  reply(&r, SAGA_OUTCOME_SUCCESS);
  saga_instance_t before = r.in;
  assert_int_equal(feed(&r, t1), SAGA_IGNORED);
  assert_string_equal(r.last.reason, "stale_timer");
  assert_int_equal(r.last.nactions, 0);
  assert_same_instance(&before, &r.in);
  assert_int_equal(feed(&r, (saga_event_t){SAGA_EV_BACKOFF_DONE, 0, 1, 1, SAGA_KIND_COMMAND}),
                   SAGA_IGNORED);
}

/* Every operator action in every state where it does not apply is refused, naming the state. */
static void test_illegal_operator_actions(void **state) {
  struct {
    const char *setup; /* how to reach the state: s=success f=failure p=pause F=fail comps */
    saga_event_type_t action;
    const char *reason;
  } cases[] = {
      {"", SAGA_EV_OP_RETRY, "retry applies to a FAILED saga; the saga is RUNNING"},
      {"", SAGA_EV_OP_RESUME, "resume applies to a paused saga; the saga is RUNNING"},
      {"p", SAGA_EV_OP_PAUSE,
       "pause applies to a RUNNING or COMPENSATING saga that is not paused; the saga is RUNNING "
       "(paused)"},
      {"p", SAGA_EV_OP_RETRY, "retry applies to a FAILED saga; the saga is RUNNING (paused)"},
      {"sf", SAGA_EV_OP_ABORT, "abort applies to a RUNNING saga; the saga is COMPENSATING"},
      {"sf", SAGA_EV_OP_RETRY, "retry applies to a FAILED saga; the saga is COMPENSATING"},
      {"sf", SAGA_EV_OP_RESUME, "resume applies to a paused saga; the saga is COMPENSATING"},
      {"ssss", SAGA_EV_OP_ABORT, "abort applies to a RUNNING saga; the saga is COMPLETED"},
      {"ssss", SAGA_EV_OP_RETRY, "retry applies to a FAILED saga; the saga is COMPLETED"},
      {"ssss", SAGA_EV_OP_PAUSE,
       "pause applies to a RUNNING or COMPENSATING saga that is not paused; the saga is COMPLETED"},
      {"ssss", SAGA_EV_OP_RESUME, "resume applies to a paused saga; the saga is COMPLETED"},
      {"sfs", SAGA_EV_OP_ABORT, "abort applies to a RUNNING saga; the saga is COMPENSATED"},
      {"sfs", SAGA_EV_OP_RETRY, "retry applies to a FAILED saga; the saga is COMPENSATED"},
      {"sfs", SAGA_EV_OP_PAUSE,
       "pause applies to a RUNNING or COMPENSATING saga that is not paused; the saga is "
       "COMPENSATED"},
      {"sfF", SAGA_EV_OP_ABORT, "abort applies to a RUNNING saga; the saga is FAILED"},
      {"sfF", SAGA_EV_OP_PAUSE,
       "pause applies to a RUNNING or COMPENSATING saga that is not paused; the saga is FAILED"},
      {"sfF", SAGA_EV_OP_RESUME, "resume applies to a paused saga; the saga is FAILED"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    run_t r;
    start(&r);
    for (const char *s = cases[i].setup; *s; s++) {
      switch (*s) {
      case 's': reply(&r, SAGA_OUTCOME_SUCCESS); break;
      case 'f': reply(&r, SAGA_OUTCOME_FAILURE); break;
      case 'p': op(&r, SAGA_EV_OP_PAUSE); break;
      case 'F':
        reply(&r, SAGA_OUTCOME_FAILURE);
        backoff_done(&r);
        reply(&r, SAGA_OUTCOME_FAILURE);
        break;
      }
    }
    saga_instance_t before = r.in;
    assert_int_equal(op(&r, cases[i].action), SAGA_REFUSED);
    if (strcmp(r.last.reason, cases[i].reason) != 0)
      fail_msg("case %zu: got \"%s\", want \"%s\"", i, r.last.reason, cases[i].reason);
    assert_int_equal(r.last.nactions, 0);
    assert_same_instance(&before, &r.in);
  }
}

static void test_pause_holds_sends_until_resume(void **state) {
  run_t r;
  start(&r);
  assert_int_equal(op(&r, SAGA_EV_OP_PAUSE), SAGA_APPLIED);
  /* The reply is still applied; the next command is held. */
  assert_int_equal(reply(&r, SAGA_OUTCOME_SUCCESS), SAGA_APPLIED);
  assert_int_equal(r.in.wait, SAGA_WAIT_HELD);
  assert_string_equal(r.sends, "C0.1");
  /* A reply for the held (never sent) attempt is not applied. */
  expect_ignored(&r, (saga_event_t){SAGA_EV_REPLY, SAGA_OUTCOME_SUCCESS, 1, 1, SAGA_KIND_COMMAND},
                 "late");
  assert_int_equal(op(&r, SAGA_EV_OP_RESUME), SAGA_APPLIED);
  assert_string_equal(r.sends, "C0.1 C1.1");
  assert_int_equal(r.in.wait, SAGA_WAIT_REPLY);
  /* Paused during a backoff: the retry is held too. */
  reply(&r, SAGA_OUTCOME_RETRY);
  op(&r, SAGA_EV_OP_PAUSE);
  backoff_done(&r);
  assert_int_equal(r.in.wait, SAGA_WAIT_HELD);
  assert_string_equal(r.sends, "C0.1 C1.1");
  op(&r, SAGA_EV_OP_RESUME);
  assert_string_equal(r.sends, "C0.1 C1.1 C1.2");
  /* Paused while compensating. */
  reply(&r, SAGA_OUTCOME_FAILURE);
  assert_string_equal(r.sends, "C0.1 C1.1 C1.2 U0.1");
  op(&r, SAGA_EV_OP_PAUSE);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
}

static void test_deadline_and_abort(void **state) {
  /* The deadline with c's command out: c may have acted, so c then a are undone. */
  run_t r;
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_int_equal(op(&r, SAGA_EV_DEADLINE), SAGA_APPLIED);
  assert_true(has_history(&r.last, "deadline_passed"));
  assert_int_equal(op(&r, SAGA_EV_DEADLINE), SAGA_IGNORED);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 U2.1 U0.1");
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  /* An abort while c backs off after a retry reply: c did nothing, only a is undone. */
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_RETRY);
  assert_int_equal(op(&r, SAGA_EV_OP_ABORT), SAGA_APPLIED);
  assert_true(has_history(&r.last, "aborted"));
  /* The backoff timer that was armed is stale now. */
  assert_int_equal(feed(&r, (saga_event_t){SAGA_EV_BACKOFF_DONE, 0, 2, 1, SAGA_KIND_COMMAND}),
                   SAGA_IGNORED);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_string_equal(r.sends, "C0.1 C1.1 C2.1 U0.1");
  assert_int_equal(r.in.state, SAGA_COMPENSATED);
  /* Abort before anything completed, with a's command out: a is undone. */
  start(&r);
  op(&r, SAGA_EV_OP_ABORT);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  assert_string_equal(r.sends, "C0.1 U0.1");
}

static void test_cursor_round_trip(void **state) {
  run_t r;
  start(&r);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  reply(&r, SAGA_OUTCOME_SUCCESS);
  timeout(&r);
  op(&r, SAGA_EV_OP_PAUSE);
  json_t *j = saga_instance_cursor_json(&r.in);
  assert_non_null(j);
  saga_instance_t back;
  char err[128];
  assert_int_equal(saga_instance_from_cursor(&back, r.in.state, j, err, sizeof err), 0);
  assert_same_instance(&back, &r.in);
  json_decref(j);
  j = json_pack("{s:s}", "wait", "nope");
  assert_int_equal(saga_instance_from_cursor(&back, SAGA_RUNNING, j, err, sizeof err), BT_EINVAL);
  json_decref(j);
  saga_state_t s;
  assert_int_equal(saga_state_parse("COMPENSATING", &s), 0);
  assert_int_equal(s, SAGA_COMPENSATING);
  assert_int_equal(saga_state_parse("running", &s), BT_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_happy_path),
      cmocka_unit_test(test_failure_at_each_step),
      cmocka_unit_test(test_retry_with_backoff_then_success),
      cmocka_unit_test(test_timeout_exhausted_compensates_the_timed_out_step),
      cmocka_unit_test(test_retry_exhausted_does_not_compensate_the_step),
      cmocka_unit_test(test_compensation_failure_then_operator_retry),
      cmocka_unit_test(test_stale_duplicate_late_replies),
      cmocka_unit_test(test_stale_timers_ignored),
      cmocka_unit_test(test_illegal_operator_actions),
      cmocka_unit_test(test_pause_holds_sends_until_resume),
      cmocka_unit_test(test_deadline_and_abort),
      cmocka_unit_test(test_cursor_round_trip),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
