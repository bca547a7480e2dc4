/* baton-devkafka: librdkafka's mock cluster as a standalone development and test Kafka, with
 * an HTTP control endpoint for fault injection. It runs until SIGTERM or SIGINT, then exits 0. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "cluster.h"
#include "control.h"
#include "forwarder.h"
#include "http_server.h"
#include "log.h"

static const char usage[] =
    "usage: baton-devkafka [options]\n"
    "\n"
    "Runs an in-memory Kafka (librdkafka's mock cluster: real protocol on 127.0.0.1,\n"
    "consumer groups, idempotent producer) until SIGTERM or SIGINT.\n"
    "\n"
    "  --brokers N            number of brokers, ids 1..N (default 1, at most 16)\n"
    "  --topics LIST          topics to create: name[:partitions],... (default partitions 1;\n"
    "                         replication factor min(N, 3))\n"
    "  --port P               stable bootstrap port for broker 1 on 127.0.0.1, forwarded to\n"
    "                         its real (random) port; 0 = none (default)\n"
    "  --bootstrap-file F     write the bootstrap list to F once ready (atomic rename)\n"
    "  --control-port C       HTTP control port on 127.0.0.1 (default 0 = any free port)\n"
    "  --control-file F       write the control URL to F once ready (atomic rename)\n"
    "  --help                 this text\n"
    "\n"
    "Control endpoint (JSON):\n"
    "  GET    /status                                  bootstrap and brokers' state\n"
    "  POST   /brokers/{id|all}/down, /brokers/{id|all}/up\n"
    "  POST   /brokers/{id|all}/rtt                    {\"ms\": N}\n"
    "  POST   /errors                                  {\"api_key\": K, \"errors\": [code, ...]}\n"
    "  DELETE /errors/{api_key}\n"
    "  POST   /topics                                  {\"name\": \"t\", \"partitions\": P}\n"
    "  POST   /topics/{topic}/partitions/{p}/leader    {\"id\": broker}\n"
    "\n"
    "Limits: everything lives in memory and is lost on exit; each partition keeps about 5 MB\n"
    "(older data is dropped beyond that), so size test data to fit. Leaders never move by\n"
    "themselves: a partition whose leader is down waits until it is up again.\n";

typedef struct devkafka {
  dk_cluster_t cluster;
  dk_forwarder_t *forwarder;
  dk_control_t control;
  char bootstrap[DK_MAX_BROKERS * 64];
  char control_url[64];
} devkafka_t;

static void die_usage(const char *flag, const char *what) {
  fprintf(stderr, "baton-devkafka: %s %s\n(see --help)\n", flag, what);
  exit(2);
}

static int parse_int(const char *flag, const char *s, int min, int max) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < min || v > max) {
    char what[64];
    snprintf(what, sizeof what, "must be an integer in %d..%d", min, max);
    die_usage(flag, what);
  }
  return (int)v;
}

/* Writes via a temporary file and rename, so a reader never sees a partial file. */
static void write_atomic(const char *path, const char *content) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f || fprintf(f, "%s\n", content) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
    bt_fatal("cannot write %s", path);
}

static void create_topics(dk_cluster_t *c, const char *list) {
  char *copy = strdup(list), *save = NULL;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(t, ':');
    int partitions = 1;
    if (colon) {
      *colon = '\0';
      partitions = parse_int("--topics", colon + 1, 1, 1000);
    }
    int rc = dk_cluster_topic_create(c, t, partitions);
    if (rc != 0)
      bt_fatal("--topics: cannot create \"%s\": %s", t, bt_strerror(rc));
  }
  free(copy);
}

static void on_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  devkafka_t *dk = arg;
  if (dk->forwarder)
    dk_forwarder_close(dk->forwarder);
  dk_cluster_stop(&dk->cluster);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"brokers", required_argument, NULL, 'b'},   {"topics", required_argument, NULL, 't'},
      {"port", required_argument, NULL, 'p'},      {"bootstrap-file", required_argument, NULL, 'f'},
      {"control-port", required_argument, NULL, 'c'},
      {"control-file", required_argument, NULL, 'F'}, {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int brokers = 1, port = 0, control_port = 0;
  const char *topics = NULL, *bootstrap_file = NULL, *control_file = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case 'b': brokers = parse_int("--brokers", optarg, 1, DK_MAX_BROKERS); break;
    case 't': topics = optarg; break;
    case 'p': port = parse_int("--port", optarg, 0, 65535); break;
    case 'f': bootstrap_file = optarg; break;
    case 'c': control_port = parse_int("--control-port", optarg, 0, 65535); break;
    case 'F': control_file = optarg; break;
    case 'h': fputs(usage, stdout); return 0;
    default: fputs("(see --help)\n", stderr); return 2; /* getopt named the option */
    }
  }
  if (optind < argc)
    die_usage(argv[optind], "is not an option");

  bt_log_init("devkafka", BT_LOG_INFO);
  bt_app_t app;
  bt_app_init(&app, "devkafka", 5000);
  static devkafka_t dk;
  char errstr[256];
  /* The fixed ports are bound before the mock cluster starts: its clients' outgoing
   * connections take ephemeral ports (32768-60999 on Linux), which include the dev stack's
   * defaults, and once one of them held 59092 the bind failed ("Address already in use"
   * with nothing listening). */
  if (port) {
    int rc = dk_forwarder_start(&dk.forwarder, app.loop, port);
    if (rc != 0)
      bt_fatal("--port %d: %s", port, bt_strerror(rc));
  }
  bt_http_limits_t limits;
  bt_http_limits_default(&limits);
  bt_http_server_t *srv;
  if (bt_http_server_start(&srv, &app, "127.0.0.1", control_port, &limits, errstr) != 0)
    bt_fatal("--control-port %d: %s", control_port, errstr);
  if (dk_cluster_start(&dk.cluster, brokers, errstr) != 0)
    bt_fatal("%s", errstr);
  bt_app_on_shutdown(&app, NULL, on_close, &dk);
  if (topics)
    create_topics(&dk.cluster, topics);

  /* With a stable port, clients bootstrap through it; the other brokers' real addresses
   * follow so that a bootstrap still succeeds while broker 1 is down. */
  size_t off = 0;
  for (int id = 1; id <= brokers; id++) {
    char first[32];
    snprintf(first, sizeof first, "127.0.0.1:%d", port);
    off += (size_t)snprintf(dk.bootstrap + off, sizeof dk.bootstrap - off, "%s%s",
                            id > 1 ? "," : "", id == 1 && port ? first : dk.cluster.addr[id]);
  }
  if (port && dk_forwarder_set_upstream(dk.forwarder, dk.cluster.addr[1]) != 0)
    bt_fatal("broker 1's address '%s' is not host:port", dk.cluster.addr[1]);
  dk.control = (dk_control_t){.cluster = &dk.cluster, .bootstrap = dk.bootstrap};
  dk_control_register(&dk.control, srv);
  snprintf(dk.control_url, sizeof dk.control_url, "http://127.0.0.1:%d", bt_http_server_port(srv));

  if (bootstrap_file)
    write_atomic(bootstrap_file, dk.bootstrap);
  if (control_file)
    write_atomic(control_file, dk.control_url);
  bt_log_info("devkafka ready", "{s:s, s:s, s:i}", "bootstrap", dk.bootstrap, "control",
              dk.control_url, "brokers", brokers);
  return bt_app_run(&app);
}
