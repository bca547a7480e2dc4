/* participant_job_t: one command record on its way through a participant: an optional delay,
 * the ledger transaction (effect and command id together), the reply on ce_replyto, and the
 * offset commit. Offsets are stored strictly in each partition's order, and only for a job
 * whose transaction committed and whose reply Kafka acknowledged, so a crash at any line
 * redelivers the command and the ledger answers it again without applying it twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backoff.h"
#include "fsm.h"
#include "log.h"
#include "participant.h"

typedef enum {
  JOB_DELAY,     /* waiting BATON_PARTICIPANT_DELAY_MS before the transaction */
  JOB_APPLY,     /* the ledger transaction is in Postgres */
  JOB_BACKOFF,   /* an error: waiting to retry the transaction or the reply */
  JOB_REPLY,     /* the reply (or two, for a duplicate) is in the producer */
  JOB_DONE,      /* finished: its offset is stored once every earlier job of its partition is */
  JOB_ABANDONED, /* dropped by the drain before finishing: never stored, so redelivered */
  JOB_NSTATES
} job_state_t;

static const char *const state_names[JOB_NSTATES] = {"delay", "apply", "backoff",
                                                      "reply", "done",  "abandoned"};
#define B BT_FSM_BIT
static const uint32_t legal[JOB_NSTATES] = {
    [JOB_DELAY] = B(JOB_APPLY) | B(JOB_ABANDONED),
    [JOB_APPLY] = B(JOB_BACKOFF) | B(JOB_REPLY) | B(JOB_DONE) | B(JOB_ABANDONED),
    [JOB_BACKOFF] = B(JOB_APPLY) | B(JOB_REPLY) | B(JOB_ABANDONED),
    [JOB_REPLY] = B(JOB_BACKOFF) | B(JOB_DONE) | B(JOB_ABANDONED),
    [JOB_DONE] = 0,
    [JOB_ABANDONED] = 0,
};
#undef B
static bt_fsm_def_t job_fsm = {"participant job", JOB_NSTATES, state_names, legal, {{0}}};

struct participant_job {
  participant_t *p;
  const bt_kafka_message_t *m; /* kept until the job leaves its partition's queue */
  size_t part;                 /* index in p->parts */
  participant_job_t *next;     /* the next job of the partition, in offset order */
  job_state_t state;
  bool after_reply; /* the backoff retries the reply, not the transaction */
  bool skip;        /* not a command: finished from the timer, outside the consumer's callback */
  bt_timer_t timer;
  bt_backoff_t backoff;
  participant_cmd_t cmd;
  /* The decision, made once so that retries send the same transaction. */
  const char *want; /* "success" | "failure" */
  char *result;     /* JSON text or NULL */
  char *received;   /* results[step] of a compensation, JSON text or NULL */
  bool answer, twice;
  /* The ledger's answer. */
  char outcome[16];
  char *data; /* the reply's value */
  unsigned replies_left, replies_out;
};

static void job_set_state(participant_job_t *j, job_state_t to) {
  bt_fsm_move(&job_fsm, j->state, to, j->cmd.command_id);
  j->state = to;
}

static void update_hold(participant_t *p) {
  bt_app_hold_while(&p->app, &p->held, p->draining && p->busy > 0);
}

static void job_free(participant_job_t *j) {
  bt_fsm_leave(&job_fsm, j->state);
  json_decref(j->cmd.value);
  free(j->result);
  free(j->received);
  free(j->data);
  bt_gauge_add(&j->p->stats.in_flight, -1);
  free(j);
}

/* Stores and releases the finished jobs at the head of a partition's queue, in order; a job
 * not finished yet stops the walk, so no offset passes over unfinished work. */
static void advance(participant_t *p, size_t part) {
  participant_part_t *q = &p->parts[part];
  while (q->head && q->head->state == JOB_DONE) {
    participant_job_t *j = q->head;
    /* BT_ENOENT: the partition went to another member, which will redo the command; the
     * ledger makes that harmless. */
    (void)!bt_kafka_consumer_store(p->consumer, j->m);
    bt_kafka_consumer_release(p->consumer, j->m);
    q->head = j->next;
    if (!q->head)
      q->tail = NULL;
    job_free(j);
  }
}

static void job_done(participant_job_t *j) {
  job_set_state(j, JOB_DONE);
  advance(j->p, j->part);
}

static size_t part_index(participant_t *p, int32_t partition) {
  for (size_t i = 0; i < p->nparts; i++)
    if (p->parts[i].partition == partition)
      return i;
  if (p->nparts == p->parts_cap) {
    size_t cap = p->parts_cap ? p->parts_cap * 2 : 8;
    participant_part_t *bigger = realloc(p->parts, cap * sizeof *bigger);
    if (!bigger)
      bt_fatal("out of memory");
    p->parts = bigger;
    p->parts_cap = cap;
  }
  p->parts[p->nparts] = (participant_part_t){partition, NULL, NULL};
  return p->nparts++;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int header(const bt_kafka_message_t *m, const char *name, char *out, size_t outsz,
                  bool required, char *why, size_t whysz) {
  const void *v;
  size_t len;
  out[0] = '\0';
  if (bt_kafka_message_header(m, name, &v, &len) != 0) {
    if (required)
      snprintf(why, whysz, "header %s is missing", name);
    return required ? BT_EINVAL : 0;
  }
  if (len >= outsz || memchr(v, '\0', len) || (required && len == 0)) {
    snprintf(why, whysz, "header %s must have 1 to %zu characters", name, outsz - 1);
    return BT_EINVAL;
  }
  memcpy(out, v, len);
  out[len] = '\0';
  return 0;
}

/* Reads the command's headers and value (issue 8 §2). Returns 0 or BT_EINVAL with why. */
static int parse_command(const bt_kafka_message_t *m, participant_cmd_t *c, char *why,
                         size_t whysz) {
  char ctype[64];
  if (header(m, "ce_id", c->command_id, sizeof c->command_id, true, why, whysz) ||
      header(m, "ce_type", c->type, sizeof c->type, true, why, whysz) ||
      header(m, "ce_sagaid", c->saga_id, sizeof c->saga_id, true, why, whysz) ||
      header(m, "ce_sagastep", c->step, sizeof c->step, true, why, whysz) ||
      header(m, "ce_sagaattempt", c->attempt, sizeof c->attempt, true, why, whysz) ||
      header(m, "ce_sagakind", c->kind, sizeof c->kind, true, why, whysz) ||
      header(m, "ce_replyto", c->replyto, sizeof c->replyto, true, why, whysz) ||
      header(m, "traceparent", c->traceparent, sizeof c->traceparent, false, why, whysz) ||
      header(m, "content-type", ctype, sizeof ctype, false, why, whysz))
    return BT_EINVAL;
  if (strspn(c->attempt, "0123456789") != strlen(c->attempt) || strlen(c->attempt) > 9) {
    snprintf(why, whysz, "header ce_sagaattempt: \"%s\" is not an attempt number", c->attempt);
    return BT_EINVAL;
  }
  if (strcmp(c->kind, "command") != 0 && strcmp(c->kind, "compensation") != 0) {
    snprintf(why, whysz, "header ce_sagakind: \"%s\" is not command or compensation", c->kind);
    return BT_EINVAL;
  }
  /* The engine marks a definition's `encoding: protobuf` with this content type only; the
   * value is then a baton.v1.SagaCommand, answered in kind. */
  if (strstr(ctype, "protobuf"))
    return participant_proto_decode(c, m->value, m->value_len, why, whysz);
  json_error_t je;
  c->value = m->value ? json_loadb(m->value, m->value_len, 0, &je) : NULL;
  if (!json_is_object(c->value)) {
    snprintf(why, whysz, "the value is not a JSON object");
    return BT_EINVAL;
  }
  return 0;
}

/* ---- the decision ------------------------------------------------------------------------- */

static bool chance(double rate) {
  return rate > 0 && (double)bt_random_below(1000000) < rate * 1e6;
}

/* Whether the saga input names this step under `rule`, e.g. {"fail_at":"authorize-payment"}:
 * the deterministic way for tests to choose which saga fails where. */
static bool rule_hits(const participant_cmd_t *c, const char *rule) {
  const char *at = json_string_value(json_object_get(json_object_get(c->value, "input"), rule));
  return at && strcmp(at, c->step) == 0;
}

static char *dump(json_t *v) {
  char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(v);
  return s;
}

static char *refusal(const char *error, const char *reason) {
  return dump(json_pack("{s:s, s:s}", "error", error, "reason", reason));
}

/* fail_compensation_at refuses the step's compensation; with "fail_compensation_until":
 * <Unix seconds> only until then, so that a saga goes FAILED and an operator retry after that
 * time compensates it (the demo's operator retry). A value that is not Unix seconds refuses
 * with a reason naming the rule, which the saga's history then shows. */
static void refuse_compensation(participant_job_t *j) {
  json_t *until = json_object_get(json_object_get(j->cmd.value, "input"),
                                  "fail_compensation_until");
  if (until && (!json_is_integer(until) || json_integer_value(until) < 0)) {
    j->want = "failure";
    j->result = refusal("bad_rule", "fail_compensation_until: expected Unix seconds (an integer)");
    return;
  }
  if (until && (json_int_t)time(NULL) >= json_integer_value(until))
    return; /* the participant changed its mind: compensate */
  j->want = "failure";
  j->result = refusal("refused", until ? "fail_compensation_until" : "fail_compensation_at");
}

static void decide(participant_job_t *j) {
  participant_t *p = j->p;
  const participant_role_t *r = p->role;
  participant_cmd_t *c = &j->cmd;
  j->want = "success";
  j->answer = true;
  if (strcmp(c->kind, "command") == 0) {
    if (strcmp(c->type, r->command) != 0) {
      j->want = "failure";
      j->result = refusal("unknown_command", c->type);
    } else if (rule_hits(c, "fail_at")) {
      j->want = "failure";
      j->result = refusal("refused", "fail_at");
    } else if (chance(p->fail_rate)) {
      j->want = "failure";
      j->result = refusal("refused", "fail_rate");
    } else {
      j->result = dump(r->result(c));
    }
    if (rule_hits(c, "never_answer_at"))
      j->answer = false;
  } else {
    if (!r->compensation || strcmp(c->type, r->compensation) != 0) {
      j->want = "failure";
      j->result = refusal("unknown_compensation", c->type);
    } else if (rule_hits(c, "fail_compensation_at")) {
      refuse_compensation(j);
    }
    json_t *got = json_object_get(json_object_get(c->value, "results"), c->step);
    j->received = got ? dump(json_incref(got)) : NULL;
    if (rule_hits(c, "never_answer_compensation_at"))
      j->answer = false;
  }
  if (chance(p->never_answer_rate))
    j->answer = false;
  j->twice = chance(p->duplicate_rate);
}

/* ---- the pipeline ------------------------------------------------------------------------- */

static void apply(participant_job_t *j);
static void reply(participant_job_t *j);

static void on_timer(bt_timers_t *w, bt_timer_t *t) {
  (void)w;
  participant_job_t *j = BT_CONTAINER_OF(t, participant_job_t, timer);
  if (j->skip) {
    job_set_state(j, JOB_APPLY); /* through APPLY: DONE is reached only from a stage */
    job_done(j);
  } else if (j->state == JOB_BACKOFF && j->after_reply)
    reply(j);
  else
    apply(j);
}

static void retry_later(participant_job_t *j, bool after_reply, const char *what,
                        const char *err) {
  participant_t *p = j->p;
  bt_counter_inc(&p->stats.retries);
  uint64_t ms = bt_backoff_next(&j->backoff);
  bt_log_warn("retrying", "{s:s, s:s, s:s, s:I}", "command_id", j->cmd.command_id, "what", what,
              "error", err, "in_ms", (json_int_t)ms);
  job_set_state(j, JOB_BACKOFF);
  j->after_reply = after_reply;
  bt_timer_start(&p->timers, &j->timer, ms);
}

static void on_applied(const bt_pg_result_t *r, void *arg) {
  participant_job_t *j = arg;
  participant_t *p = j->p;
  p->busy--;
  update_hold(p);
  if (r->err != 0) {
    if (p->draining) {
      job_set_state(j, JOB_ABANDONED);
      return;
    }
    retry_later(j, false, "ledger transaction", r->errmsg);
    return;
  }
  const PGresult *res = r->res[0];
  if (PQntuples(res) != 1)
    bt_fatal("the ledger's apply function returned %d rows", PQntuples(res));
  snprintf(j->outcome, sizeof j->outcome, "%s", PQgetvalue(res, 0, 0));
  j->data = PQgetisnull(res, 0, 1) ? NULL : strdup(PQgetvalue(res, 0, 1));
  const char *effect = PQgetvalue(res, 0, 2);
  bool answered = PQgetvalue(res, 0, 3)[0] == 't';
  bool duplicate = PQgetvalue(res, 0, 4)[0] == 't';
  if (duplicate)
    bt_counter_inc(&p->stats.duplicates);
  else if (strcmp(effect, "applied") == 0)
    bt_counter_inc(&p->stats.applied);
  else if (strcmp(effect, "refused") == 0)
    bt_counter_inc(&p->stats.refused);
  bt_log_debug("command applied", "{s:s, s:s, s:s, s:b, s:b}", "command_id", j->cmd.command_id,
               "effect", effect, "outcome", j->outcome, "answered", answered, "duplicate",
               duplicate);
  if (!answered) {
    bt_counter_inc(&p->stats.silent);
    job_done(j);
    return;
  }
  j->replies_left = j->twice ? 2 : 1;
  reply(j);
}

static void apply(participant_job_t *j) {
  participant_t *p = j->p;
  if (!j->want)
    decide(j);
  participant_cmd_t *c = &j->cmd;
  const char *values[10] = {c->saga_id, c->step,   c->attempt,  c->kind,
                            c->command_id, c->type, j->want,  j->result,
                            j->received,   j->answer ? "true" : "false"};
  job_set_state(j, JOB_APPLY);
  int rc = bt_pg_pool_query(p->pg, p->sql_apply, 10, values, on_applied, j);
  if (rc != 0) {
    retry_later(j, false, "ledger transaction", bt_strerror(rc));
    return;
  }
  p->busy++;
}

static void on_delivered(const bt_kafka_delivery_t *d, void *opaque) {
  participant_job_t *j = opaque;
  participant_t *p = j->p;
  p->busy--;
  j->replies_out--;
  if (d->err == 0) {
    j->replies_left--;
    bt_counter_inc(&p->stats.replies);
  }
  update_hold(p);
  if (j->replies_out > 0)
    return;
  if (j->replies_left == 0) {
    job_done(j);
  } else if (p->draining) {
    job_set_state(j, JOB_ABANDONED);
  } else {
    /* Possibly persisted or not, the reply is sent again: the orchestrator drops duplicates
     * by (saga, step, attempt, kind). */
    retry_later(j, true, "reply", d->errstr);
  }
}

static void reply(participant_job_t *j) {
  participant_t *p = j->p;
  participant_cmd_t *c = &j->cmd;
  char id[PARTICIPANT_MAX_ID + 8], source[PARTICIPANT_MAX_NAME + 32], type[PARTICIPANT_MAX_NAME + 8];
  snprintf(id, sizeof id, "%s/reply", c->command_id);
  snprintf(source, sizeof source, "/baton/participant/%s", p->role->name);
  snprintf(type, sizeof type, "%s.reply", c->type);
  bt_kafka_header_t h[16];
  size_t n = 0;
#define H(name, v) h[n++] = (bt_kafka_header_t){name, v, strlen(v)}
  void *pb = NULL;
  size_t pblen = 0;
  if (c->protobuf) {
    /* A SagaReply in the value. The engine tells the forms apart by ce_specversion, so this
     * reply carries no ce_ attributes, only its content type (and the trace). */
    pb = participant_proto_reply(c, j->outcome, j->data, &pblen);
    if (!pb)
      bt_fatal("out of memory");
    H("content-type", "application/protobuf");
  } else {
    /* Binary mode: the attributes are ce_ headers, the value is the data (issue 8 §2). */
    H("ce_specversion", "1.0");
    H("ce_id", id);
    H("ce_type", type);
    H("ce_source", source);
    H("ce_subject", c->saga_id);
    H("ce_sagaid", c->saga_id);
    H("ce_sagastep", c->step);
    H("ce_sagaattempt", c->attempt);
    H("ce_sagakind", c->kind);
    H("ce_outcome", j->outcome);
    H("content-type", "application/json");
  }
  if (c->traceparent[0])
    H("traceparent", c->traceparent);
#undef H
  bt_kafka_record_t rec = {
      .topic = c->replyto,
      .partition = BT_KAFKA_PARTITION_ANY,
      .key = c->saga_id,
      .key_len = strlen(c->saga_id),
      .value = pb ? pb : j->data,
      .value_len = pb ? pblen : j->data ? strlen(j->data) : 0,
      .headers = h,
      .nheaders = n,
  };
  job_set_state(j, JOB_REPLY);
  for (unsigned i = j->replies_out; i < j->replies_left; i++) {
    int rc = bt_kafka_producer_produce(p->producer, &rec, on_delivered, j);
    if (rc != 0) {
      if (j->replies_out == 0)
        retry_later(j, true, "reply", bt_strerror(rc));
      /* Otherwise the delivery report of the one accepted decides what comes next. */
      break;
    }
    j->replies_out++;
    p->busy++;
  }
  free(pb); /* the producer copied the value */
}

/* ---- the consumer and the drain ----------------------------------------------------------- */

void participant_on_message(bt_kafka_consumer_t *c, const bt_kafka_message_t *m, void *arg) {
  participant_t *p = arg;
  (void)c;
  if (p->draining)
    return; /* not stored: another member (or the next start) gets it */
  bt_counter_inc(&p->stats.commands);
  participant_job_t *j = calloc(1, sizeof *j);
  if (!j)
    bt_fatal("out of memory");
  j->p = p;
  j->m = m;
  j->part = part_index(p, m->partition);
  bt_timer_init(&j->timer, on_timer);
  bt_backoff_init(&j->backoff, (uint64_t)p->cfg.retry_min_ms, (uint64_t)p->cfg.retry_max_ms,
                  true);
  bt_fsm_register(&job_fsm, "baton_participant_jobs", "Commands in each stage of their work.");
  bt_fsm_enter(&job_fsm, JOB_DELAY);
  j->state = JOB_DELAY;
  bt_gauge_add(&p->stats.in_flight, 1);
  bt_kafka_consumer_keep(p->consumer, m);
  participant_part_t *q = &p->parts[j->part];
  if (q->tail)
    q->tail->next = j;
  else
    q->head = j;
  q->tail = j;

  char why[256];
  if (parse_command(m, &j->cmd, why, sizeof why) != 0) {
    /* Nothing to answer to: skipping it (and committing past it) is the only way forward. */
    bt_counter_inc(&p->stats.malformed);
    bt_log_warn("not a command; skipped", "{s:s, s:i, s:I}", "error", why, "partition",
                (int)m->partition, "offset", (json_int_t)m->offset);
    /* Finished on the next tick: releasing m inside the consumer's callback would free it
     * under the consumer's feet. */
    j->skip = true;
    bt_timer_start(&p->timers, &j->timer, 0);
    return;
  }
  if (p->cfg.delay_ms > 0)
    bt_timer_start(&p->timers, &j->timer, (uint64_t)p->cfg.delay_ms);
  else
    apply(j);
}

void participant_jobs_drain(bt_app_t *app, void *arg) {
  (void)app;
  participant_t *p = arg;
  p->draining = true;
  /* Jobs waiting on a timer are dropped now, unstored: the command goes to the next member,
   * and the ledger tells it whether this one had applied anything. */
  for (size_t i = 0; i < p->nparts; i++)
    for (participant_job_t *j = p->parts[i].head; j; j = j->next)
      if (j->state == JOB_DELAY || j->state == JOB_BACKOFF) {
        bt_timer_stop(&p->timers, &j->timer);
        job_set_state(j, JOB_ABANDONED);
      }
  update_hold(p);
}

void participant_jobs_close(bt_app_t *app, void *arg) {
  (void)app;
  participant_t *p = arg;
  /* The drain is over: no job is inside Postgres or the producer any more. */
  for (size_t i = 0; i < p->nparts; i++) {
    participant_job_t *j = p->parts[i].head;
    while (j) {
      participant_job_t *next = j->next;
      bt_kafka_consumer_release(p->consumer, j->m);
      job_free(j);
      j = next;
    }
    p->parts[i].head = p->parts[i].tail = NULL;
  }
  free(p->parts);
  p->parts = NULL;
  p->nparts = p->parts_cap = 0;
}
