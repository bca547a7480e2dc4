/* proj_read_t: the projector's read API, served from Redis per the storage layout
 * (bt:proj:{P}:current names the live version; doc:, idx:, agg: and off under it). Each read
 * is one Lua script run, so a document, an index page or a total comes with the applied
 * offsets of the same instant. `?after=<topic>:<partition>:<offset>` holds the answer until
 * that offset is applied (read-your-writes), bounded by `?wait=` and by a waiter budget. */
#ifndef PROJ_READ_H
#define PROJ_READ_H

#include <stdint.h>

#include "app.h"
#include "config.h"
#include "http_server.h"
#include "proj_def.h"
#include "redis_client.h"

typedef struct proj_read proj_read_t;

typedef struct proj_read_config {
  int64_t wait_default_ms;     /* ?after= without ?wait= waits this long */
  int64_t wait_max_ms;         /* ?wait= is capped at this */
  int64_t max_waiters;         /* requests waiting on ?after= at once; past it 503 */
  int64_t poll_ms;             /* how often waiters re-read the applied offsets */
  int64_t limit_default;       /* index page size without ?limit= */
  int64_t limit_max;           /* largest ?limit= */
} proj_read_config_t;

/* The rows of the read API's settings, for the service's config table; `cfg` is a
 * proj_read_config_t lvalue. */
#define PROJ_READ_CONFIG_VARS(cfg)                                                              \
  {"BATON_PROJECTOR_READ_WAIT", BT_CFG_DURATION, "5s", 0, 600000, 0, NULL,                      \
   "How long a read with ?after= waits for its offset when it gives no ?wait=.",                \
   &(cfg).wait_default_ms},                                                                     \
  {"BATON_PROJECTOR_READ_WAIT_MAX", BT_CFG_DURATION, "30s", 0, 600000, 0, NULL,                 \
   "Largest ?wait= honoured; longer waits are cut to this.", &(cfg).wait_max_ms},              \
  {"BATON_PROJECTOR_READ_MAX_WAITERS", BT_CFG_INT, "1024", 1, 1000000, 0, NULL,                 \
   "Reads waiting on ?after= at once; further ones are answered 503 with Retry-After.",        \
   &(cfg).max_waiters},                                                                         \
  {"BATON_PROJECTOR_READ_POLL", BT_CFG_DURATION, "5ms", 1, 10000, 0, NULL,                      \
   "While reads wait on ?after=, the applied offsets are re-read this often (the sinks also "  \
   "wake waiters after each batch).", &(cfg).poll_ms},                                         \
  {"BATON_PROJECTOR_READ_LIMIT", BT_CFG_INT, "50", 1, 5000, 0, NULL,                            \
   "Documents per index page without ?limit=.", &(cfg).limit_default},                          \
  {"BATON_PROJECTOR_READ_LIMIT_MAX", BT_CFG_INT, "1000", 1, 5000, 0, NULL,                      \
   "Largest ?limit= of an index page (at most 5000: a page is one MGET inside the read "     \
   "script, bounded by Lua's stack).", &(cfg).limit_max}

/* Registers the routes on http (with bt_http_server_route_auth: whoever owns the server
 * installs the bearer-token hook with bt_auth_start) and the shutdown hooks on app:
 *   GET /v1/projections/{name}/aggregates/{agg}/{group}
 *   GET /v1/projections/{name}/{key}
 *   GET /v1/projections/{name}?index=&value=&limit=&cursor=
 * defs, redis and cfg are borrowed and must outlive the app's run. Returns 0 or BT_ENOMEM. */
int proj_read_start(proj_read_t **out, bt_app_t *app, bt_http_server_t *http, bt_redis_t *redis,
                    const proj_def_set_t *defs, const proj_read_config_t *cfg) BT_MUSTCHECK;

/* The sinks' hook: projection `name` applied a batch, so reads waiting on it re-check now
 * instead of at the next poll. Cheap when nobody waits. r may be NULL. */
void proj_read_applied(proj_read_t *r, const char *name);

#endif
