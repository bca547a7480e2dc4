/* relay_load: the load and measuring tool of bench/relay.sh. It measures, in one process and
 * on one monotonic clock:
 *   1. the maximum append rate: closed-loop single-event appends on keep-alive connections;
 *   2. at half that rate (open loop), the time from the moment an append was due to be sent
 *      to the moment a consumer reads the relayed record from Kafka (matched by ce_id);
 *   3. the baseline: the same rate produced straight into Kafka by a producer configured as
 *      the broker's (idempotent, acks=all, the same linger and timeout), timed from the moment
 *      each produce() was due to the same consumer reading it: the Kafka hop alone, which any
 *      relay has to pay on top of Postgres.
 * Coordinated omission: every send has a due time on a fixed open-loop schedule, and latency
 * counts from that due time, not from when a thread blocked on an earlier answer got round to
 * sending. A late send therefore shows up as latency instead of vanishing from the sample.
 * Latencies are never clamped: one below zero would be a measuring bug, and is counted.
 * It prints one "key value" line per figure; relay.sh turns them into the JSON line.
 *
 * usage: relay_load BROKER_URL KAFKA_BOOTSTRAP TOPIC BASE_TOPIC MAXSECS SECS THREADS LINGER_MS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 2000000

static const char *host = "127.0.0.1";
static int port;
static const char *brokers, *topic, *base_topic;
static int nthreads;
static double rate;           /* events per second in the paced phases */
static double secs;
static atomic_int phase;      /* 0 idle, 1 max-rate, 2 paced appends */
static atomic_long seq_next;
static atomic_long max_done;
static const char *linger_ms = "0"; /* the broker's BATON_KAFKA_LINGER, in ms */
static uint64_t *sent_ns;     /* per event: when its append (or produce) was due */
static uint64_t *recv_ns;     /* per event: read by the consumer */
static uint64_t *ack_ns;      /* per event: its 201 arrived (the paced appends only) */
static atomic_long received, appended, failed;
static atomic_int stop_consumer;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
  uint64_t n = now_ns();
  if (t <= n)
    return;
  struct timespec ts = {.tv_sec = (time_t)((t - n) / 1000000000u), .tv_nsec = (long)((t - n) % 1000000000u)};
  nanosleep(&ts, NULL);
}

static void die(const char *what) {
  fprintf(stderr, "relay_load: %s\n", what);
  exit(1);
}

/* ---- a minimal keep-alive HTTP/1.1 client ---------------------------------------------- */

typedef struct conn {
  int fd;
  char buf[65536];
  size_t len;
} conn_t;

static int conn_open(conn_t *c) {
  c->len = 0;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, host, &sa.sin_addr);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return 0;
}

/* Sends one request and reads the response; returns the status or -1. */
static int conn_request(conn_t *c, const char *req, size_t reqlen) {
  if (c->fd < 0 && conn_open(c) != 0)
    return -1;
  for (size_t off = 0; off < reqlen;) {
    ssize_t w = send(c->fd, req + off, reqlen - off, MSG_NOSIGNAL);
    if (w <= 0)
      goto broken;
    off += (size_t)w;
  }
  for (;;) {
    char *hend = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (hend) {
      size_t hlen = (size_t)(hend - c->buf) + 4;
      int status = atoi(c->buf + 9);
      const char *cl = memmem(c->buf, hlen, "Content-Length:", 15);
      if (!cl)
        cl = memmem(c->buf, hlen, "content-length:", 15);
      size_t body = cl ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
      if (c->len >= hlen + body) {
        memmove(c->buf, c->buf + hlen + body, c->len - hlen - body);
        c->len -= hlen + body;
        return status;
      }
    }
    if (c->len == sizeof c->buf)
      goto broken;
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r <= 0)
      goto broken;
    c->len += (size_t)r;
  }
broken:
  close(c->fd);
  c->fd = -1;
  return -1;
}

static size_t append_request(char *out, size_t n, const char *stream, const char *id) {
  char body[512];
  int bl = snprintf(body, sizeof body,
                    "{\"expected_version\":\"any\",\"events\":[{\"specversion\":\"1.0\",\"id\":\"%s\","
                    "\"source\":\"/bench\",\"type\":\"bench.relay\",\"data\":{\"payload\":"
                    "\"0123456789abcdef0123456789abcdef\"}}]}",
                    id);
  return (size_t)snprintf(out, n,
                          "POST /v1/streams/%s/events HTTP/1.1\r\nHost: %s\r\n"
                          "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                          stream, host, bl, body);
}

/* ---- appenders -------------------------------------------------------------------------- */

static void *appender(void *arg) {
  int t = (int)(intptr_t)arg;
  conn_t *c = calloc(1, sizeof *c);
  c->fd = -1;
  char req[1024], stream[64], id[64];
  /* Phase 1: closed loop, as fast as the broker answers. */
  while (atomic_load(&phase) == 0)
    usleep(100);
  snprintf(stream, sizeof stream, "benchmax-%d", t);
  long i = 0;
  while (atomic_load(&phase) == 1) {
    snprintf(id, sizeof id, "m-%d-%ld-%d", t, i++, (int)getpid());
    size_t n = append_request(req, sizeof req, stream, id);
    if (conn_request(c, req, n) == 201)
      atomic_fetch_add(&max_done, 1);
  }
  /* Phase 2: open loop at `rate` across the threads; each thread keeps its own schedule. */
  while (atomic_load(&phase) != 2)
    usleep(100);
  snprintf(stream, sizeof stream, "bench-%d", t);
  double interval_ns = 1e9 * nthreads / rate;
  uint64_t start = now_ns() + (uint64_t)(interval_ns * t / nthreads), end = now_ns() + (uint64_t)(secs * 1e9);
  for (long k = 0;; k++) {
    uint64_t due = start + (uint64_t)(interval_ns * (double)k);
    if (due >= end)
      break;
    sleep_until(due);
    long s = atomic_fetch_add(&seq_next, 1);
    if (s >= MAX_EVENTS)
      break;
    snprintf(id, sizeof id, "b-%ld", s);
    size_t n = append_request(req, sizeof req, stream, id);
    /* The clock starts when the append was due, before it is sent: the relay may publish
     * before the 201 arrives, and a thread that is behind its schedule must not hide it. */
    sent_ns[s] = due;
    if (conn_request(c, req, n) == 201) {
      ack_ns[s] = now_ns();
      atomic_fetch_add(&appended, 1);
    } else {
      sent_ns[s] = 0;
      atomic_fetch_add(&failed, 1);
    }
  }
  if (c->fd >= 0)
    close(c->fd);
  free(c);
  return NULL;
}

/* ---- Kafka ------------------------------------------------------------------------------------ */

static rd_kafka_t *kafka_new(rd_kafka_type_t type) {
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char group[64];
  snprintf(group, sizeof group, "relay-bench-%d", (int)getpid());
  if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) != RD_KAFKA_CONF_OK)
    die(err);
  if (type == RD_KAFKA_CONSUMER) {
    /* Nagle's algorithm holds back a small request behind an unacknowledged one for up to
     * the peer's delayed-ACK time (40 ms on Linux); the measuring consumer turns it off so
     * that it measures Kafka, not TCP's coalescing. */
    rd_kafka_conf_set(conf, "socket.nagle.disable", "true", err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", err, sizeof err);
    rd_kafka_conf_set(conf, "fetch.error.backoff.ms", "5", err, sizeof err);
  }
  rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
  if (!rk)
    die(err);
  return rk;
}

/* Assigns every partition of topic at its current end, so exactly what comes next is read. */
static void assign_at_end(rd_kafka_t *rk, const char *t) {
  const rd_kafka_metadata_t *md;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, t, NULL);
  if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
      md->topics[0].partition_cnt == 0)
    die("no metadata for the topic");
  int np = md->topics[0].partition_cnt;
  rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
  for (int p = 0; p < np; p++) {
    int64_t lo, hi;
    if (rd_kafka_query_watermark_offsets(rk, t, p, &lo, &hi, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
      die("cannot read watermarks");
    rd_kafka_topic_partition_list_add(l, t, p)->offset = hi;
  }
  if (rd_kafka_assign(rk, l) != RD_KAFKA_RESP_ERR_NO_ERROR)
    die("assign failed");
  rd_kafka_topic_partition_list_destroy(l);
}

static void *consumer(void *arg) {
  rd_kafka_t *rk = arg;
  while (!atomic_load(&stop_consumer)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 10);
    if (!m)
      continue;
    uint64_t t = now_ns();
    if (!m->err) {
      rd_kafka_headers_t *h = NULL;
      const void *v = NULL;
      size_t len = 0;
      long s = -1;
      if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          rd_kafka_header_get_last(h, "ce_id", &v, &len) == RD_KAFKA_RESP_ERR_NO_ERROR && len > 2 &&
          len < 32 && memcmp(v, "b-", 2) == 0) {
        char tmp[32];
        memcpy(tmp, v, len);
        tmp[len] = '\0';
        s = strtol(tmp + 2, NULL, 10);
      }
      if (s >= 0 && s < MAX_EVENTS && recv_ns[s] == 0) {
        recv_ns[s] = t;
        atomic_fetch_add(&received, 1);
      }
    }
    rd_kafka_message_destroy(m);
  }
  return NULL;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Sorts the latencies of events 0..n-1 seen on both ends; prints p50/p99/max as `name_*`. */
/* The relay figure split in two, to tell where its time goes: due -> 201 (the append: HTTP,
 * queueing for a group, its commit) and 201 -> readable in Kafka (the relay's share, plus the
 * consumer's fetch). The second can be negative (the relay may publish before the 201 reaches
 * us), so it is reported as measured, sorted, not as a latency to judge by. */
static void report_append(long n) {
  int64_t *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a), *r = malloc((size_t)(n > 0 ? n : 1) * sizeof *r);
  long k = 0;
  for (long i = 0; i < n; i++) {
    if (!sent_ns[i] || !recv_ns[i] || !ack_ns[i])
      continue;
    a[k] = (int64_t)ack_ns[i] - (int64_t)sent_ns[i];
    r[k] = (int64_t)recv_ns[i] - (int64_t)ack_ns[i];
    k++;
  }
  qsort(a, (size_t)k, sizeof *a, cmp_i64);
  qsort(r, (size_t)k, sizeof *r, cmp_i64);
  if (k) {
    size_t i99 = (size_t)((double)k * 0.99);
    printf("append_p50_ms %.3f\nappend_p99_ms %.3f\nafter_ack_p50_ms %.3f\nafter_ack_p99_ms %.3f\n",
           (double)a[k / 2] / 1e6, (double)a[i99] / 1e6, (double)r[k / 2] / 1e6, (double)r[i99] / 1e6);
  } else {
    printf("append_p50_ms null\nappend_p99_ms null\nafter_ack_p50_ms null\nafter_ack_p99_ms null\n");
  }
  free(a);
  free(r);
}

static void report(const char *name, long n) {
  int64_t *lat = malloc((size_t)(n > 0 ? n : 1) * sizeof *lat);
  long k = 0, negative = 0;
  for (long i = 0; i < n; i++) {
    if (!sent_ns[i] || !recv_ns[i])
      continue;
    /* Kept as measured, sign and all: a record read before its append was due would be a
     * bug in this tool, and shows as negative_latencies. */
    lat[k] = (int64_t)recv_ns[i] - (int64_t)sent_ns[i];
    negative += lat[k] < 0;
    k++;
  }
  /* RELAY_LOAD_DUMP=prefix writes "sent_ms latency_ms" per event, to see when a tail happens. */
  const char *dump = getenv("RELAY_LOAD_DUMP");
  if (dump) {
    char path[512];
    snprintf(path, sizeof path, "%s.%s", dump, name);
    FILE *f = fopen(path, "w");
    for (long i = 0; f && i < n; i++)
      if (sent_ns[i] && recv_ns[i])
        fprintf(f, "%.3f %.3f\n", (double)sent_ns[i] / 1e6,
                (double)((int64_t)recv_ns[i] - (int64_t)sent_ns[i]) / 1e6);
    if (f)
      fclose(f);
  }
  qsort(lat, (size_t)k, sizeof *lat, cmp_i64);
  /* No sample: "null" in the JSON, never a number that looks like a measurement. */
  char p50[32] = "null", p99[32] = "null", max[32] = "null";
  if (k) {
    snprintf(p50, sizeof p50, "%.3f", (double)lat[k / 2] / 1e6);
    snprintf(p99, sizeof p99, "%.3f", (double)lat[(size_t)((double)k * 0.99)] / 1e6);
    snprintf(max, sizeof max, "%.3f", (double)lat[k - 1] / 1e6);
  }
  printf("%s_count %ld\n%s_missing %ld\n%s_negative_latencies %ld\n%s_p50_ms %s\n%s_p99_ms %s\n"
         "%s_max_ms %s\n",
         name, k, name, n - k, name, negative, name, p50, name, p99, name, max);
  free(lat);
}

static void wait_received(long want, double timeout_s) {
  uint64_t end = now_ns() + (uint64_t)(timeout_s * 1e9);
  while (atomic_load(&received) < want && now_ns() < end)
    usleep(10000);
}

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  (void)opaque;
  if (m->err)
    atomic_fetch_add(&failed, 1);
}

int main(int argc, char **argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: relay_load BROKER_URL KAFKA_BOOTSTRAP TOPIC BASE_TOPIC MAXSECS SECS THREADS "
                    "LINGER_MS\n");
    return 2;
  }
  if (sscanf(argv[1], "http://127.0.0.1:%d", &port) != 1)
    die("the broker URL must be http://127.0.0.1:PORT");
  brokers = argv[2];
  topic = argv[3];
  base_topic = argv[4];
  double maxsecs = atof(argv[5]);
  secs = atof(argv[6]);
  nthreads = atoi(argv[7]);
  linger_ms = argv[8];
  sent_ns = calloc(MAX_EVENTS, sizeof *sent_ns);
  recv_ns = calloc(MAX_EVENTS, sizeof *recv_ns);
  ack_ns = calloc(MAX_EVENTS, sizeof *ack_ns);

  pthread_t *th = calloc((size_t)nthreads, sizeof *th);
  for (int t = 0; t < nthreads; t++)
    pthread_create(&th[t], NULL, appender, (void *)(intptr_t)t);

  /* 1. Maximum append rate, closed loop. */
  atomic_store(&phase, 1);
  uint64_t t0 = now_ns();
  usleep((useconds_t)(maxsecs * 1e6));
  atomic_store(&phase, 3); /* between phases: appenders wait */
  double elapsed = (double)(now_ns() - t0) / 1e9;
  double max_rate = (double)atomic_load(&max_done) / elapsed;
  printf("max_append_rate %.0f\n", max_rate);
  fflush(stdout);
  rate = max_rate / 2;
  printf("rate %.0f\n", rate);
  /* Let the relay work off the max-rate burst so the paced phase starts from a caught-up relay. */
  sleep(3);

  /* 2. Ours: paced appends, the consumer times the relayed records. */
  rd_kafka_t *cons = kafka_new(RD_KAFKA_CONSUMER);
  assign_at_end(cons, topic);
  pthread_t ct;
  pthread_create(&ct, NULL, consumer, cons);
  usleep(500000); /* the fetchers are running */
  atomic_store(&phase, 2);
  for (int t = 0; t < nthreads; t++)
    pthread_join(th[t], NULL);
  long n = atomic_load(&seq_next);
  wait_received(atomic_load(&appended), 30);
  printf("appended %ld\nappend_failed %ld\n", atomic_load(&appended), atomic_load(&failed));
  report("relay", n);
  report_append(n);
  atomic_store(&stop_consumer, 1);
  pthread_join(ct, NULL);

  /* 3. Baseline: the same rate straight into Kafka, timed from produce() to the read. */
  memset(sent_ns, 0, MAX_EVENTS * sizeof *sent_ns);
  memset(recv_ns, 0, MAX_EVENTS * sizeof *recv_ns);
  atomic_store(&received, 0);
  atomic_store(&stop_consumer, 0);
  assign_at_end(cons, base_topic);
  pthread_create(&ct, NULL, consumer, cons);
  char err[256];
  rd_kafka_conf_t *pc = rd_kafka_conf_new();
  /* Configured as the broker's producer (common/kafka_client.c, kafka_producer.c): idempotent,
   * acks=all, the broker's linger and delivery timeout, the same reconnect backoff, and
   * librdkafka's default Nagle setting, which the broker does not change either. */
  if (rd_kafka_conf_set(pc, "bootstrap.servers", brokers, err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(pc, "enable.idempotence", "true", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(pc, "acks", "all", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(pc, "linger.ms", linger_ms, err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(pc, "message.timeout.ms", "30000", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(pc, "reconnect.backoff.max.ms", "1000", err, sizeof err) != RD_KAFKA_CONF_OK)
    die(err);
  rd_kafka_conf_set_dr_msg_cb(pc, on_dr);
  rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
  if (!prod)
    die(err);
  /* Warm up, as the broker was: topic metadata and producer id before anything is timed. */
  for (int p = 0; p < 64; p++) {
    char key[32];
    snprintf(key, sizeof key, "bench-%d", p);
    rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(base_topic), RD_KAFKA_V_KEY(key, strlen(key)),
                      RD_KAFKA_V_VALUE((void *)"warm", 4), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                      RD_KAFKA_V_END);
  }
  rd_kafka_flush(prod, 10000);
  usleep(500000);
  long total = (long)(rate * secs);
  if (total > MAX_EVENTS)
    total = MAX_EVENTS;
  uint64_t start = now_ns();
  double interval = 1e9 / rate;
  const char payload[] = "{\"payload\":\"0123456789abcdef0123456789abcdef\"}";
  for (long s = 0; s < total; s++) {
    uint64_t due = start + (uint64_t)(interval * (double)s);
    sleep_until(due);
    char id[32], key[32];
    snprintf(id, sizeof id, "b-%ld", s);
    snprintf(key, sizeof key, "bench-%ld", s % nthreads);
    rd_kafka_headers_t *h = rd_kafka_headers_new(4);
    rd_kafka_header_add(h, "ce_id", -1, id, -1);
    rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
    sent_ns[s] = due;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        prod, RD_KAFKA_V_TOPIC(base_topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)payload, sizeof payload - 1), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e) {
      rd_kafka_headers_destroy(h);
      sent_ns[s] = 0;
    }
    rd_kafka_poll(prod, 0);
  }
  rd_kafka_flush(prod, 30000);
  wait_received(total, 30);
  report("baseline", total);
  atomic_store(&stop_consumer, 1);
  pthread_join(ct, NULL);
  rd_kafka_destroy(prod);
  rd_kafka_consumer_close(cons);
  rd_kafka_destroy(cons);
  return 0;
}
