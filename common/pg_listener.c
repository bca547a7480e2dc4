/* The listener is a one-connection bt_pg_pool_t: the pool's connection hook sends the LISTEN
 * batch on every new session, and its notification hook delivers what PQnotifies() drains.
 * LISTEN runs as one transaction, so the channels take effect together at its COMMIT. */
#include "pg_listener.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define CHANNELS_MAX 64

struct bt_pg_listener {
  bt_pg_listener_config_t cfg;
  bt_pg_pool_t *pool;
  bt_pg_stmt_t *listen; /* one "LISTEN "channel"" per channel */
  size_t nlisten;
  bool listening;       /* the current session's LISTEN committed */
  unsigned generation;  /* sessions so far: an answer for an older one is stale */
  unsigned njobs;       /* LISTEN batches not answered yet: they hold the memory */
  bool closing;
  char name[64];        /* cfg.name points here */
};

static void listener_free(bt_pg_listener_t *l) {
  for (size_t i = 0; l->listen && i < l->nlisten; i++)
    free((char *)l->listen[i].sql);
  free(l->listen);
  free(l);
}

typedef struct {
  bt_pg_listener_t *l;
  unsigned generation;
} listen_job_t;

static void on_listen_done(const bt_pg_result_t *r, void *arg) {
  listen_job_t *lj = arg;
  bt_pg_listener_t *l = lj->l;
  unsigned gen = lj->generation;
  free(lj);
  l->njobs--;
  if (l->closing) {
    if (l->njobs == 0)
      listener_free(l);
    return;
  }
  if (gen != l->generation)
    return; /* that session is gone; the new one sent its own LISTEN */
  if (r->err) {
    /* A lost connection comes back through on_conn and listens again; a refusal (no such
     * permission, say) would be refused again, so it stays not ready and says why. */
    bt_log(r->err == BT_ECONNRESET ? BT_LOG_WARN : BT_LOG_ERROR, "pg listen failed",
           "{s:s, s:s}", "listener", l->cfg.name, "error", r->errmsg);
    return;
  }
  l->listening = true;
  bt_log_info("pg listening", "{s:s, s:i}", "listener", l->cfg.name, "channels", (int)l->nlisten);
  l->cfg.on_listening(l->cfg.arg);
}

static void on_conn(bool up, void *arg) {
  bt_pg_listener_t *l = arg;
  l->listening = false;
  if (!up || l->closing)
    return;
  l->generation++;
  listen_job_t *lj = malloc(sizeof *lj);
  int rc = lj ? bt_pg_pool_batch(l->pool, l->listen, l->nlisten, on_listen_done, lj) : BT_ENOMEM;
  if (rc) {
    free(lj);
    bt_log_error("pg listen not sent", "{s:s, s:s}", "listener", l->cfg.name, "error",
                 bt_strerror(rc));
    return;
  }
  *lj = (listen_job_t){l, l->generation};
  l->njobs++;
}

static void on_notify(const char *channel, const char *payload, int be_pid, void *arg) {
  bt_pg_listener_t *l = arg;
  if (!l->closing)
    l->cfg.on_notify(channel, payload, be_pid, l->cfg.arg);
}

/* "LISTEN "name"" with every double quote doubled, as quote_ident does. */
static char *listen_sql(const char *channel) {
  size_t n = strlen(channel), q = 0;
  for (size_t i = 0; i < n; i++)
    q += channel[i] == '"';
  char *s = malloc(n + q + sizeof "LISTEN \"\"");
  if (!s)
    return NULL;
  char *d = s + sprintf(s, "LISTEN \"");
  for (size_t i = 0; i < n; i++) {
    if (channel[i] == '"')
      *d++ = '"';
    *d++ = channel[i];
  }
  memcpy(d, "\"", 2);
  return s;
}

int bt_pg_listener_new(bt_pg_listener_t **out, uv_loop_t *loop,
                       const bt_pg_listener_config_t *cfg) {
  if (!cfg->dsn || !cfg->on_notify || !cfg->on_listening || cfg->nchannels == 0 ||
      cfg->nchannels > CHANNELS_MAX || !cfg->channels)
    return BT_EINVAL;
  for (size_t i = 0; i < cfg->nchannels; i++)
    if (!cfg->channels[i] || !*cfg->channels[i])
      return BT_EINVAL;
  bt_pg_listener_t *l = calloc(1, sizeof *l);
  if (!l)
    return BT_ENOMEM;
  l->cfg = *cfg;
  snprintf(l->name, sizeof l->name, "%s", cfg->name ? cfg->name : "pg_listener");
  l->cfg.name = l->name;
  l->listen = calloc(cfg->nchannels, sizeof *l->listen);
  if (!l->listen) {
    listener_free(l);
    return BT_ENOMEM;
  }
  for (size_t i = 0; i < cfg->nchannels; i++, l->nlisten++) {
    char *sql = listen_sql(cfg->channels[i]);
    if (!sql) {
      listener_free(l);
      return BT_ENOMEM;
    }
    l->listen[i] = (bt_pg_stmt_t){sql, 0, NULL};
  }
  bt_pg_pool_config_t pc = {.dsn = cfg->dsn,
                            .name = l->cfg.name,
                            .size = 1,
                            .connect_timeout_ms = cfg->connect_timeout_ms,
                            .reconnect_min_ms = cfg->reconnect_min_ms,
                            .reconnect_max_ms = cfg->reconnect_max_ms,
                            .job_timeout_ms = cfg->job_timeout_ms,
                            .stats = cfg->stats,
                            .on_conn = on_conn,
                            .on_notify = on_notify,
                            .hook_arg = l};
  int rc = bt_pg_pool_new(&l->pool, loop, &pc);
  if (rc) {
    listener_free(l);
    return rc;
  }
  *out = l;
  return 0;
}

bool bt_pg_listener_ready(void *listener) {
  const bt_pg_listener_t *l = listener;
  return !l->closing && l->listening && bt_pg_pool_ready(l->pool);
}

void bt_pg_listener_close(bt_pg_listener_t *l) {
  if (l->closing)
    return;
  l->closing = true;
  /* The pool fails a queued LISTEN from inside its close, and one in flight from a later
   * callback, which frees l if it is the last; the extra count keeps l alive meanwhile. */
  l->njobs++;
  bt_pg_pool_close(l->pool);
  if (--l->njobs == 0)
    listener_free(l);
}

static void on_app_close(bt_app_t *app, void *arg) { BT_UNUSED(app); bt_pg_listener_close(arg); }

void bt_pg_listener_attach(bt_pg_listener_t *l, bt_app_t *app, const char *dep) {
  bt_app_add_dependency(app, dep, bt_pg_listener_ready, l);
  bt_app_on_shutdown(app, NULL, on_app_close, l);
}
