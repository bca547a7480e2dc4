/* baton-projector: entry point. `baton-projector check DIR` validates projection definitions
 * and exits; `baton-projector migrate` applies the schema and exits; `baton-projector rebuild
 * NAME [URL]` asks the running service to rebuild a projection; otherwise it loads the
 * definitions (any error stops start-up with every message), migrates, prepares each
 * projection's live version, and projects its topics into Redis and Postgres while serving
 * /healthz, /readyz and /metrics, until a signal drains it. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "log.h"
#include "proj_def.h"
#include "proj_schema.h"
#include "projector.h"

static projector_t projector;

static int cmd_check(const char *dir) {
  proj_def_set_t set;
  char err[1024];
  int rc = proj_def_load_dir(&set, dir, 0, err, sizeof err);
  if (rc) {
    fprintf(stderr, "baton-projector: %s\n", rc == BT_ENOMEM ? "out of memory" : err);
    return 1;
  }
  for (size_t i = 0; i < set.ndefs; i++) {
    const proj_def_t *d = &set.defs[i];
    printf("%s: projection %s (%s, %zu topic(s), %zu rule(s), %zu index(es), %zu aggregate(s))\n",
           d->file, d->name, proj_format_name(d->format), d->ntopics, d->nrules, d->nindexes,
           d->naggregates);
  }
  proj_def_set_free(&set);
  return 0;
}

static int cmd_migrate(projector_t *p) {
  char err[512];
  if (proj_schema_migrate(p->cfg.pg_dsn, err, sizeof err) != 0) {
    bt_log_error("schema migration failed", "{s:s}", "error", err);
    return 1;
  }
  bt_log_info("schema is up to date", "{s:i}", "version", proj_schema_version());
  return 0;
}

static int load_definitions(projector_t *p) {
  char err[1024];
  int rc = proj_def_load_dir(&p->defs, p->cfg.projections, 0, err, sizeof err);
  if (rc) {
    const char *msg = rc == BT_ENOMEM ? "out of memory" : err;
    fprintf(stderr, "baton-projector: %s\n", msg);
    bt_log_error("invalid projection definitions", "{s:s, s:s}", "directory",
                 p->cfg.projections, "error", msg);
    return rc;
  }
  for (size_t i = 0; i < p->defs.ndefs; i++) {
    const proj_def_t *d = &p->defs.defs[i];
    bt_log_info("loaded projection", "{s:s, s:s, s:s, s:i, s:i}", "projection", d->name,
                "format", proj_format_name(d->format), "file", d->file, "indexes",
                (int)d->nindexes, "aggregates", (int)d->naggregates);
  }
  return 0;
}

/* `baton-projector rebuild NAME [URL]`: asks the running service (URL, default
 * http://127.0.0.1:$BATON_HTTP_PORT, port 8082 when unset) to rebuild NAME, as
 * POST /v1/projections/NAME/rebuild does, and prints its answer. A command-line client: it
 * blocks, and runs no loop. Exit 0 when the rebuild started (202). The route needs a bearer
 * token when the service has some: BATON_API_TOKEN, else the first of BATON_API_TOKENS (the
 * service's own setting, so the command works from inside its pod). */
static int cmd_rebuild(const char *name, const char *url) {
  char host[256] = "127.0.0.1", port[16];
  const char *env_port = getenv("BATON_HTTP_PORT");
  snprintf(port, sizeof port, "%s", env_port && *env_port ? env_port : "8082");
  if (url) {
    const char *h = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(h, ':'), *slash = strchr(h, '/');
    size_t hl = colon ? (size_t)(colon - h) : slash ? (size_t)(slash - h) : strlen(h);
    snprintf(host, sizeof host, "%.*s", (int)hl, h);
    if (colon)
      snprintf(port, sizeof port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) {
    fprintf(stderr, "baton-projector: cannot resolve %s:%s\n", host, port);
    return 1;
  }
  int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    fprintf(stderr, "baton-projector: cannot connect to %s:%s (is the service running?)\n", host,
            port);
    freeaddrinfo(ai);
    if (fd >= 0)
      close(fd);
    return 1;
  }
  freeaddrinfo(ai);
  const char *token = getenv("BATON_API_TOKEN");
  size_t tlen = token ? strlen(token) : 0;
  if (!token || !*token) {
    token = getenv("BATON_API_TOKENS");
    tlen = token ? strcspn(token, ",") : 0;
  }
  char auth[600] = "";
  if (tlen > 0 && tlen < 512)
    snprintf(auth, sizeof auth, "Authorization: Bearer %.*s\r\n", (int)tlen, token);
  char req[1200], resp[4096];
  int n = snprintf(req, sizeof req,
                   "POST /v1/projections/%s/rebuild HTTP/1.1\r\nHost: %s\r\n%s"
                   "Content-Length: 0\r\nConnection: close\r\n\r\n",
                   name, host, auth);
  size_t got = 0;
  if (n > 0 && n < (int)sizeof req && write(fd, req, (size_t)n) == n) {
    ssize_t r;
    while (got < sizeof resp - 1 && (r = read(fd, resp + got, sizeof resp - 1 - got)) > 0)
      got += (size_t)r;
  }
  close(fd);
  resp[got] = '\0';
  int status = 0;
  if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
    fprintf(stderr, "baton-projector: no answer from %s:%s\n", host, port);
    return 1;
  }
  const char *body = strstr(resp, "\r\n\r\n");
  printf("%d %s\n", status, body ? body + 4 : "");
  return status == 202 ? 0 : 1;
}

static void usage(void) {
  fprintf(stderr,
          "usage: baton-projector [check DIR | migrate | rebuild NAME [URL] | --help]\n");
}

int main(int argc, char **argv) {
  projector_t *p = &projector;
  if (argc > 1 && strcmp(argv[1], "check") == 0) {
    if (argc != 3) {
      usage();
      return 2;
    }
    return cmd_check(argv[2]);
  }
  if (argc > 1 && strcmp(argv[1], "rebuild") == 0) {
    if (argc != 3 && argc != 4) {
      usage();
      return 2;
    }
    return cmd_rebuild(argv[2], argc == 4 ? argv[3] : NULL);
  }
  bool migrate_only = argc > 1 && strcmp(argv[1], "migrate") == 0;
  if (argc > 1 && !migrate_only && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0) {
    usage();
    return 2;
  }
  size_t nvars;
  const bt_config_var_t *vars = projector_config_vars(p, &nvars);
  bt_config_startup("baton-projector", argc, argv, vars, nvars, &p->cfg.common);
  if (migrate_only)
    return cmd_migrate(p);
  if (load_definitions(p) != 0)
    return 1;
  if (p->cfg.migrate && cmd_migrate(p) != 0)
    return 1;

  bt_metrics_register_process();
  bt_app_init(&p->app, "baton-projector", (uint64_t)p->cfg.common.shutdown_timeout_ms);
  bt_http_limits_t limits;
  bt_common_config_limits(&p->cfg.common, &limits);
  char err[256];
  if (bt_http_server_start(&p->http, &p->app, p->cfg.common.http_host,
                           (int)p->cfg.common.http_port, &limits, err) != 0) {
    bt_log_error("cannot start the HTTP server", "{s:s}", "error", err);
    return 1;
  }
  if (projector_start(p) != 0)
    return 1;
  /* The read API serves from Redis, so it exists only when some projection is kept there. */
  if (!bt_auth_start(&p->app, p->http, p->cfg.api_tokens, p->cfg.api_tokens_file))
    return 1;
  if (p->redis && proj_read_start(&p->read, &p->app, p->http, p->redis, &p->defs,
                                  &p->cfg.read) != 0) {
    bt_log_error("cannot start the read API", NULL);
    return 1;
  }
  bt_log_info("listening", "{s:s, s:i, s:i}", "host", p->cfg.common.http_host, "port",
              bt_http_server_port(p->http), "projections", (int)p->defs.ndefs);
  int rc = bt_app_run(&p->app);
  bt_log_info("exiting", "{s:i}", "code", rc);
  projector_free(p);
  return rc;
}
