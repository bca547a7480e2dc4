/* proj_rebuild: rebuilding a projection as version n+1 beside the live version n.
 *
 * `POST /v1/projections/{name}/rebuild` adds version n+1 in state building (Postgres row and
 * tables, off the loop) and starts a second runner for it, with its own consumer group and
 * offsets, from the topics' beginning; it writes only its own keys and tables, and readers
 * keep reading `current` = n. Once its sinks hold at least what the live version's hold on
 * every partition, the switch happens: the live runner is retired (it applies nothing more),
 * Postgres switches `projector.current` and the versions' states in one transaction, then
 * Redis switches `bt:proj:{P}:current` in one MULTI. After BATON_PROJECTOR_REBUILD_GRACE the
 * old version's tables, offsets and keys are dropped.
 *
 * Crashes: before the Postgres switch, the version is still `building` and the next start
 * resumes it from its own offsets; after it, the next start runs n+1 as the live version and
 * its first Redis write sets `current` (a live writer raises `current` to its version), so a
 * half switch is repaired and never reverses. The versions a crash left retired, before or
 * during their drop, are dropped one grace period after the next start, one after the other
 * (a versions row goes with its drop, so a retired row means "not dropped yet"; crashes in
 * several grace periods leave several). When a rebuild resumes at that start too, they are
 * dropped after its own drop. */
#include "proj_rebuild.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http_req.h"
#include "log.h"
#include "proj_layout.h"
#include "proj_runner.h"
#include "proj_schema.h"
#include "projector.h"

typedef enum { RB_IDLE, RB_PREPARING, RB_BUILDING, RB_SWITCHING, RB_GRACE, RB_DROPPING } rb_state_t;

static const char *const rb_names[] = {"idle", "preparing", "building", "switching", "grace",
                                       "dropping"};

struct proj_rebuild {
  projector_t *p;
  size_t idx;                  /* into p->defs / p->runners */
  rb_state_t state;
  int from, to;
  proj_runner_t *runner;       /* the building version */
  proj_runner_t *retired;      /* the old live runner, kept until exit (its consumer lives) */
  uv_work_t work;
  int work_rc;
  char err[512];
  uv_timer_t timer;
  bt_http_req_t *req;          /* the POST waiting for its version to exist */
  char pattern[300];           /* bt:proj:{P}:v{from}:* while dropping */
  char cursor[64];             /* the SCAN cursor after the page being unlinked */
  int *leftover;               /* retired versions a crash left, still to drop after `from` */
  size_t nleftover;
};


static const proj_def_t *def_of(proj_rebuild_t *b) { return &b->p->defs.defs[b->idx]; }

static void rb_set(proj_rebuild_t *b, rb_state_t s) {
  bt_log_info("rebuild", "{s:s, s:s, s:i, s:i}", "projection", def_of(b)->name, "state",
              rb_names[s], "from", b->from, "to", b->to);
  b->state = s;
}

static void on_check(uv_timer_t *t);

/* ---- begin: version n+1 and its runner ---- */

static void begin_work(uv_work_t *w) {
  proj_rebuild_t *b = w->data;
  b->work_rc = proj_schema_begin_rebuild(b->p->cfg.pg_dsn, def_of(b), &b->to, b->err,
                                         sizeof b->err);
}

static int start_runner(proj_rebuild_t *b) {
  int rc = proj_runner_new(&b->runner, b->p, def_of(b), b->to, true);
  if (rc)
    return rc;
  if (b->p->redis) {
    char key[300];
    proj_layout_projection_prefix(key, sizeof key, def_of(b)->name);
    /* Informative for readers and operators; a failure here changes nothing. */
    if (bt_redis_command(b->p->redis, NULL, NULL, "SET %sbuilding %d", key, b->to) != 0)
      bt_log_warn("rebuild: could not mark the version building in Redis", "{s:s}", "projection",
                  def_of(b)->name);
  }
  rb_set(b, RB_BUILDING);
  uv_timer_start(&b->timer, on_check, 250, 250);
  return 0;
}

static void begin_done(uv_work_t *w, int status) {
  proj_rebuild_t *b = w->data;
  bt_http_req_t *req = b->req;
  b->req = NULL;
  if (status != 0 || b->work_rc != 0) {
    rb_set(b, RB_IDLE);
    if (req && b->work_rc == BT_ECONFLICT)
      bt_http_respond_error(req, 409, "rebuild_running", "%s", b->err);
    else if (req)
      bt_http_respond_error(req, 503, "postgres_unavailable", "%s", b->err);
    return;
  }
  int rc = start_runner(b);
  if (rc) {
    bt_log_error("rebuild: cannot start the runner", "{s:s}", "projection", def_of(b)->name);
    rb_set(b, RB_IDLE);
    if (req)
      bt_http_respond_error(req, 500, "rebuild_failed", "cannot start the runner");
    return;
  }
  if (req)
    bt_http_respond_json(req, 202,
                         json_pack("{s:s, s:i, s:i, s:s}", "projection", def_of(b)->name,
                                   "version", b->to, "live", b->from, "state", "building"));
}

static void handle_rebuild(bt_http_req_t *req, void *arg) {
  projector_t *p = arg;
  const char *name = bt_http_req_param(req, "name");
  for (size_t i = 0; i < p->defs.ndefs; i++) {
    if (strcmp(p->defs.defs[i].name, name) != 0)
      continue;
    proj_rebuild_t *b = p->rebuilds[i];
    if (b->state != RB_IDLE) {
      bt_http_respond_error(req, 409, "rebuild_running", "projection %s: version %d is %s", name,
                            b->to, rb_names[b->state]);
      return;
    }
    b->from = p->versions[i];
    b->req = req;
    rb_set(b, RB_PREPARING);
    b->work.data = b;
    if (uv_queue_work(p->app.loop, &b->work, begin_work, begin_done) != 0) {
      b->req = NULL;
      rb_set(b, RB_IDLE);
      bt_http_respond_error(req, 503, "busy", "cannot queue the rebuild");
    }
    return;
  }
  bt_http_respond_error(req, 404, "projection_not_found", "no projection named %s", name);
}

/* ---- switch ---- */

static void drop_step(proj_rebuild_t *b, const char *cursor);

static void on_grace(uv_timer_t *t);

static void switch_redis_done(bt_redis_t *r, int err, const redisReply *const *replies, size_t n,
                              void *arg) {
  (void)r;
  (void)replies;
  (void)n;
  proj_rebuild_t *b = arg;
  if (err)
    bt_log_warn("rebuild: Redis switch failed; the live writer sets current on its next write",
                "{s:s, s:s}", "projection", def_of(b)->name, "error", bt_strerror(err));
}

static void switch_work(uv_work_t *w) {
  proj_rebuild_t *b = w->data;
  b->work_rc = proj_schema_switch(b->p->cfg.pg_dsn, def_of(b)->name, b->from, b->to, b->err,
                                  sizeof b->err);
}

static void switch_done(uv_work_t *w, int status) {
  proj_rebuild_t *b = w->data;
  projector_t *p = b->p;
  if (status != 0 || b->work_rc != 0) {
    /* Nothing switched: the old version is live and still complete up to where it was
     * retired; resume it and try again. */
    bt_log_warn("rebuild: switch failed; retrying", "{s:s, s:s}", "projection", def_of(b)->name,
                "error", b->err);
    rb_set(b, RB_BUILDING);
    uv_timer_start(&b->timer, on_check, 1000, 250);
    return;
  }
  proj_runner_promote(b->runner);
  b->retired = p->runners[b->idx];
  p->runners[b->idx] = b->runner;
  p->versions[b->idx] = b->to;
  b->runner = NULL;
  if (p->redis) {
    char pre[300];
    proj_layout_projection_prefix(pre, sizeof pre, def_of(b)->name);
    bt_redis_batch_t *batch = bt_redis_batch_new(p->redis);
    int rc = batch ? 0 : BT_ENOMEM;
    if (!rc) rc = bt_redis_batch_addf(batch, "MULTI");
    if (!rc) rc = bt_redis_batch_addf(batch, "SET %scurrent %d", pre, b->to);
    if (!rc) rc = bt_redis_batch_addf(batch, "DEL %sbuilding", pre);
    if (!rc) rc = bt_redis_batch_addf(batch, "HSET %sv%d:meta state live", pre, b->to);
    if (!rc) rc = bt_redis_batch_addf(batch, "HSET %sv%d:meta state retired", pre, b->from);
    if (!rc) rc = bt_redis_batch_addf(batch, "EXEC");
    if (!rc)
      rc = bt_redis_batch_send(batch, switch_redis_done, b);
    else if (batch)
      bt_redis_batch_free(batch);
    if (rc)
      switch_redis_done(p->redis, rc, NULL, 0, b);
  }
  rb_set(b, RB_GRACE);
  uv_timer_start(&b->timer, on_grace, (uint64_t)p->cfg.rebuild_grace_ms, 0);
}

static void on_check(uv_timer_t *t) {
  proj_rebuild_t *b = t->data;
  if (b->state != RB_BUILDING || !proj_runner_caught_up(b->runner, b->p->runners[b->idx]))
    return;
  uv_timer_stop(&b->timer);
  /* From here the old version stops moving; the new one goes on applying. */
  proj_runner_retire(b->p->runners[b->idx]);
  rb_set(b, RB_SWITCHING);
  b->work.data = b;
  if (uv_queue_work(b->p->app.loop, &b->work, switch_work, switch_done) != 0) {
    b->work_rc = BT_EAGAIN;
    switch_done(&b->work, 0);
  }
}

/* ---- drop after the grace period ---- */

static void drop_work(uv_work_t *w) {
  proj_rebuild_t *b = w->data;
  b->work_rc = proj_schema_drop_version(b->p->cfg.pg_dsn, def_of(b)->name, b->from, b->err,
                                        sizeof b->err);
}

static void drop_next(proj_rebuild_t *b);

/* One version is dropped (or given up on): the next leftover follows at once, it had its
 * grace period already. */
static void dropped(proj_rebuild_t *b) {
  if (b->nleftover > 0) {
    b->from = b->leftover[--b->nleftover];
    drop_next(b);
    return;
  }
  rb_set(b, RB_IDLE);
}

static void drop_failed(proj_rebuild_t *b) {
  bt_log_warn("rebuild: dropping the old version's Redis keys failed; they stay", "{s:s, s:i}",
              "projection", def_of(b)->name, "version", b->from);
  dropped(b);
}

/* The page's keys are gone: the next page, or done at cursor "0". */
static void on_unlink(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  (void)r;
  proj_rebuild_t *b = arg;
  if (err || !reply || reply->type == REDIS_REPLY_ERROR) {
    drop_failed(b);
    return;
  }
  if (strcmp(b->cursor, "0") == 0)
    dropped(b);
  else
    drop_step(b, b->cursor);
}

/* One SCAN page of the version's keys: UNLINK them (named as arguments, so a cluster routes
 * the command to their slot; no script builds key names), then go on from the cursor. */
static void on_scan(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  (void)r;
  proj_rebuild_t *b = arg;
  if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
      reply->element[0]->type != REDIS_REPLY_STRING ||
      reply->element[1]->type != REDIS_REPLY_ARRAY) {
    drop_failed(b);
    return;
  }
  snprintf(b->cursor, sizeof b->cursor, "%s", reply->element[0]->str);
  const redisReply *keys = reply->element[1];
  if (keys->elements == 0) {
    on_unlink(r, 0, reply, b);
    return;
  }
  const char **argv = malloc((keys->elements + 1) * sizeof *argv);
  size_t *lens = malloc((keys->elements + 1) * sizeof *lens);
  int rc = argv && lens ? 0 : BT_ENOMEM;
  if (!rc) {
    argv[0] = "UNLINK";
    lens[0] = 6;
    for (size_t i = 0; i < keys->elements; i++) {
      argv[i + 1] = keys->element[i]->str;
      lens[i + 1] = keys->element[i]->len;
    }
    rc = bt_redis_command_argv(b->p->redis, on_unlink, b, (int)keys->elements + 1, argv, lens);
  }
  free(argv);
  free(lens);
  if (rc)
    drop_failed(b);
}

static void drop_step(proj_rebuild_t *b, const char *cursor) {
  if (bt_redis_command(b->p->redis, on_scan, b, "SCAN %s MATCH %s COUNT 1000", cursor,
                       b->pattern) != 0)
    drop_failed(b);
}

static void drop_done(uv_work_t *w, int status) {
  proj_rebuild_t *b = w->data;
  if (status != 0 || b->work_rc != 0)
    bt_log_warn("rebuild: dropping the old version's tables failed; they stay", "{s:s, s:s}",
                "projection", def_of(b)->name, "error", b->err);
  if (!b->p->redis) {
    dropped(b);
    return;
  }
  proj_layout_version_prefix(b->pattern, sizeof b->pattern - 1, def_of(b)->name, b->from);
  strncat(b->pattern, "*", sizeof b->pattern - strlen(b->pattern) - 1);
  drop_step(b, "0");
}

static void on_grace(uv_timer_t *t) { drop_next(t->data); }

static void drop_next(proj_rebuild_t *b) {
  rb_set(b, RB_DROPPING);
  b->work.data = b;
  if (uv_queue_work(b->p->app.loop, &b->work, drop_work, drop_done) != 0) {
    b->work_rc = BT_EAGAIN;
    drop_done(&b->work, 0);
  }
}

/* ---- lifecycle ---- */

static void on_close(bt_app_t *app, void *arg) {
  (void)app;
  proj_rebuild_t *b = arg;
  uv_close((uv_handle_t *)&b->timer, NULL);
}

int proj_rebuild_start(projector_t *p, const int *building, proj_retired_t *retired) {
  p->rebuilds = calloc(p->defs.ndefs, sizeof *p->rebuilds);
  if (!p->rebuilds)
    return BT_ENOMEM;
  for (size_t i = 0; i < p->defs.ndefs; i++) {
    proj_rebuild_t *b = calloc(1, sizeof *b);
    if (!b)
      return BT_ENOMEM;
    b->p = p;
    b->idx = i;
    uv_timer_init(p->app.loop, &b->timer);
    b->timer.data = b;
    bt_app_on_shutdown(&p->app, NULL, on_close, b);
    p->rebuilds[i] = b;
    /* The slot owns the list from here; it pops from the end, so the newest goes first. */
    b->leftover = retired[i].v;
    b->nleftover = retired[i].n;
    retired[i].v = NULL;
    retired[i].n = 0;
    if (building[i] > 0) {
      /* A rebuild a crash interrupted: it resumes from its own offsets. */
      b->from = p->versions[i];
      b->to = building[i];
      bt_log_info("rebuild resumed", "{s:s, s:i}", "projection", p->defs.defs[i].name, "version",
                  b->to);
      int rc = start_runner(b);
      if (rc)
        return rc;
    } else if (b->nleftover > 0) {
      /* Crashes during rebuilds' grace periods left old versions' tables and keys: readers
       * have moved on since, but they get the grace period again before the drops. */
      b->from = b->leftover[--b->nleftover];
      bt_log_info("dropping retired versions after the grace period", "{s:s, s:i, s:i, s:I}",
                  "projection", p->defs.defs[i].name, "version", b->from, "more",
                  (int)b->nleftover, "grace_ms", (json_int_t)p->cfg.rebuild_grace_ms);
      rb_set(b, RB_GRACE);
      uv_timer_start(&b->timer, on_grace, (uint64_t)p->cfg.rebuild_grace_ms, 0);
    }
  }
  bt_http_server_route_auth(p->http, "POST", "/v1/projections/{name}/rebuild", handle_rebuild, p);
  return 0;
}

void proj_rebuild_free(projector_t *p) {
  for (size_t i = 0; p->rebuilds && i < p->defs.ndefs; i++) {
    proj_rebuild_t *b = p->rebuilds[i];
    if (!b)
      continue;
    proj_runner_free(b->runner);
    proj_runner_free(b->retired);
    free(b->leftover);
    free(b);
  }
  free(p->rebuilds);
}
