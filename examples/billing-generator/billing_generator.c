/* billing-generator: the traffic of a legacy billing system for N customers (invoices issued,
 * some paid, some voided, customers updated), in the projector's three source formats,
 * deterministic by seed, produced to Kafka or written to a file. With --oracle it also writes
 * what the invoices read model must end up holding (balances, unpaid lists, open counts),
 * computed here from the generator's own bookkeeping and never with projector code, so tests
 * can hold the projector to it. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "baton/v1/billing.pb-c.h"

typedef enum { FMT_PROTOBUF, FMT_DEBEZIUM, FMT_CLOUDEVENTS } format_t;
typedef enum { EV_ISSUED, EV_PAID, EV_VOIDED, EV_CUSTOMER } event_kind_t;

typedef struct invoice {
  uint64_t id;
  uint32_t customer;
  int64_t amount_cents;
  char due_date[11];  /* YYYY-MM-DD */
  char issued_at[21]; /* RFC 3339, seconds, Z */
} invoice_t;

/* One generated event, before it is encoded in the chosen format. */
typedef struct event {
  event_kind_t kind;
  invoice_t inv;     /* the invoice as issued (every invoice event) */
  char at[21];       /* when it happened: paid_at, voided_at, updated_at */
  uint32_t customer; /* EV_CUSTOMER */
  uint64_t seq;      /* position in the stream, from 0 */
} event_t;

static struct {
  uint32_t customers;
  uint64_t events;
  uint64_t seed;
  uint64_t first_invoice;
  format_t format;
  const char *out;
  const char *oracle;
  const char *brokers;
  const char *topic;
  const char *customers_topic;
  bool debezium_schema;
  double rate; /* events per second to Kafka; 0 = as fast as possible */
} opt = {.customers = 100, .events = 10000, .seed = 1, .first_invoice = 1,
         .format = FMT_PROTOBUF};

/* ---- deterministic choices ------------------------------------------------------------- */

static uint64_t rng_state;

/* splitmix64: small, fast, and the same sequence on every platform for a seed. */
static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t n) { return rng_next() % n; }

/* Event time advances one minute per event from 2024-01-01, so dates are deterministic and
 * due dates spread over months. */
static void format_time(char *out, size_t len, uint64_t seq, bool date_only, int plus_days) {
  time_t t = (time_t)(1704067200 + (int64_t)seq * 60 + (int64_t)plus_days * 86400);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, len, date_only ? "%Y-%m-%d" : "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void invoice_id(char *out, size_t len, uint64_t id) { snprintf(out, len, "inv-%010" PRIu64, id); }
static void customer_id(char *out, size_t len, uint32_t c) { snprintf(out, len, "cust-%06u", c); }

/* ---- the billing system's state: what the oracle is computed from --------------------- */

static invoice_t *open_inv; /* issued, neither paid nor voided */
static size_t nopen, capopen;
static uint64_t next_invoice;

static void open_add(const invoice_t *inv) {
  if (nopen == capopen) {
    capopen = capopen ? capopen * 2 : 1024;
    open_inv = realloc(open_inv, capopen * sizeof *open_inv);
    if (!open_inv) {
      fprintf(stderr, "billing-generator: out of memory\n");
      exit(1);
    }
  }
  open_inv[nopen++] = *inv;
}

/* Removes and returns a random open invoice (swap with the last: deterministic). */
static invoice_t open_take(void) {
  size_t i = (size_t)rng_below(nopen);
  invoice_t inv = open_inv[i];
  open_inv[i] = open_inv[--nopen];
  return inv;
}

static void next_event(event_t *e, uint64_t seq) {
  memset(e, 0, sizeof *e);
  e->seq = seq;
  format_time(e->at, sizeof e->at, seq, false, 0);
  uint64_t r = rng_below(100);
  if (nopen == 0 || r < 45) {
    e->kind = EV_ISSUED;
    e->inv.id = next_invoice++;
    e->inv.customer = 1 + (uint32_t)rng_below(opt.customers);
    e->inv.amount_cents = 500 + (int64_t)rng_below(200000);
    static const int terms[] = {7, 14, 30, 45, 60};
    format_time(e->inv.due_date, sizeof e->inv.due_date, seq, true, terms[rng_below(5)]);
    memcpy(e->inv.issued_at, e->at, sizeof e->at);
    open_add(&e->inv);
  } else if (r < 70) {
    e->kind = EV_PAID;
    e->inv = open_take();
  } else if (r < 78) {
    e->kind = EV_VOIDED;
    e->inv = open_take();
  } else {
    e->kind = EV_CUSTOMER;
    e->customer = 1 + (uint32_t)rng_below(opt.customers);
  }
}

/* ---- encodings ------------------------------------------------------------------------- */

static const char *event_type(event_kind_t k) {
  switch (k) {
  case EV_ISSUED: return "InvoiceIssued";
  case EV_PAID: return "PaymentReceived";
  case EV_VOIDED: return "InvoiceVoided";
  case EV_CUSTOMER: return "CustomerUpdated";
  }
  return "?";
}

/* The event's own fields, as the protobuf messages name them. */
static json_t *event_data(const event_t *e) {
  char inv[32], cust[32];
  invoice_id(inv, sizeof inv, e->inv.id);
  customer_id(cust, sizeof cust, e->kind == EV_CUSTOMER ? e->customer : e->inv.customer);
  switch (e->kind) {
  case EV_ISSUED:
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "invoice_id", inv, "customer_id", cust,
                     "amount_cents", (json_int_t)e->inv.amount_cents, "currency", "EUR",
                     "due_date", e->inv.due_date, "issued_at", e->inv.issued_at);
  case EV_PAID:
    return json_pack("{s:s, s:s, s:I, s:s}", "invoice_id", inv, "customer_id", cust,
                     "amount_cents", (json_int_t)e->inv.amount_cents, "paid_at", e->at);
  case EV_VOIDED:
    return json_pack("{s:s, s:s, s:s, s:s}", "invoice_id", inv, "customer_id", cust, "reason",
                     (e->seq & 1) ? "duplicate" : "customer dispute", "voided_at", e->at);
  case EV_CUSTOMER: {
    char name[64], email[64];
    snprintf(name, sizeof name, "Customer %u rev %" PRIu64, e->customer, e->seq);
    snprintf(email, sizeof email, "billing+%u@customer%u.example", (unsigned)(e->seq % 97), e->customer);
    return json_pack("{s:s, s:s, s:s, s:s}", "customer_id", cust, "name", name, "email", email,
                     "updated_at", e->at);
  }
  }
  return NULL;
}

/* The legacy invoices table's row, as Debezium captures it. */
static json_t *invoice_row(const event_t *e, const char *status, const char *paid_at) {
  char inv[32], cust[32];
  invoice_id(inv, sizeof inv, e->inv.id);
  customer_id(cust, sizeof cust, e->inv.customer);
  return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s?}", "invoice_id", inv, "customer_id",
                   cust, "amount_cents", (json_int_t)e->inv.amount_cents, "currency", "EUR",
                   "due_date", e->inv.due_date, "issued_at", e->inv.issued_at, "status", status,
                   "paid_at", paid_at);
}

static json_t *debezium(const event_t *e) {
  json_t *before = json_null(), *after = json_null();
  const char *op, *table = "invoices";
  switch (e->kind) {
  case EV_ISSUED: op = "c"; after = invoice_row(e, "unpaid", NULL); break;
  case EV_PAID:
    op = "u";
    before = invoice_row(e, "unpaid", NULL);
    after = invoice_row(e, "paid", e->at);
    break;
  case EV_VOIDED: op = "d"; before = invoice_row(e, "unpaid", NULL); break;
  default:
    op = "u";
    table = "customers";
    after = event_data(e);
    break;
  }
  json_t *env = json_pack("{s:o, s:o, s:{s:s, s:s, s:s, s:s, s:s, s:I}, s:s, s:I}", "before",
                          before, "after", after, "source", "version", "2.5.0.Final",
                          "connector", "postgresql", "name", "legacy", "db", "billing",
                          "table", table, "lsn", (json_int_t)(1000000 + e->seq * 64), "op", op,
                          "ts_ms", (json_int_t)((1704067200 + (int64_t)e->seq * 60) * 1000));
  if (!opt.debezium_schema || !env)
    return env;
  /* The JSON converter with schemas.enable wraps the envelope; the schema itself is not read
   * by the projector, so a short stand-in is enough. */
  return json_pack("{s:{s:s, s:s}, s:o}", "schema", "type", "struct", "name",
                   "legacy.billing.Envelope", "payload", env);
}

static json_t *cloudevent(const event_t *e) {
  char id[48], subject[32];
  snprintf(id, sizeof id, "billing-%" PRIu64 "-%" PRIu64, opt.seed, e->seq);
  if (e->kind == EV_CUSTOMER)
    customer_id(subject, sizeof subject, e->customer);
  else
    invoice_id(subject, sizeof subject, e->inv.id);
  return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "specversion", "1.0", "id", id,
                   "source", "/legacy/billing", "type", event_type(e->kind), "subject", subject,
                   "time", e->at, "datacontenttype", "application/json", "data", event_data(e));
}

static uint8_t *protobuf(const event_t *e, size_t *len) {
  char inv[32], cust[32], reason[32];
  invoice_id(inv, sizeof inv, e->inv.id);
  customer_id(cust, sizeof cust, e->kind == EV_CUSTOMER ? e->customer : e->inv.customer);
  Baton__V1__BillingEvent ev = BATON__V1__BILLING_EVENT__INIT;
  Baton__V1__InvoiceIssued issued = BATON__V1__INVOICE_ISSUED__INIT;
  Baton__V1__PaymentReceived paid = BATON__V1__PAYMENT_RECEIVED__INIT;
  Baton__V1__InvoiceVoided voided = BATON__V1__INVOICE_VOIDED__INIT;
  Baton__V1__CustomerUpdated cu = BATON__V1__CUSTOMER_UPDATED__INIT;
  char at[21], due[11], issued_at[21], name[64], email[64];
  memcpy(at, e->at, sizeof at);
  memcpy(due, e->inv.due_date, sizeof due);
  memcpy(issued_at, e->inv.issued_at, sizeof issued_at);
  switch (e->kind) {
  case EV_ISSUED:
    issued.invoice_id = inv;
    issued.customer_id = cust;
    issued.amount_cents = e->inv.amount_cents;
    issued.currency = (char *)"EUR";
    issued.due_date = due;
    issued.issued_at = issued_at;
    ev.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_ISSUED;
    ev.invoice_issued = &issued;
    break;
  case EV_PAID:
    paid.invoice_id = inv;
    paid.customer_id = cust;
    paid.amount_cents = e->inv.amount_cents;
    paid.paid_at = at;
    ev.event_case = BATON__V1__BILLING_EVENT__EVENT_PAYMENT_RECEIVED;
    ev.payment_received = &paid;
    break;
  case EV_VOIDED:
    snprintf(reason, sizeof reason, "%s", (e->seq & 1) ? "duplicate" : "customer dispute");
    voided.invoice_id = inv;
    voided.customer_id = cust;
    voided.reason = reason;
    voided.voided_at = at;
    ev.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_VOIDED;
    ev.invoice_voided = &voided;
    break;
  case EV_CUSTOMER:
    snprintf(name, sizeof name, "Customer %u rev %" PRIu64, e->customer, e->seq);
    snprintf(email, sizeof email, "billing+%u@customer%u.example", (unsigned)(e->seq % 97), e->customer);
    cu.customer_id = cust;
    cu.name = name;
    cu.email = email;
    cu.updated_at = at;
    ev.event_case = BATON__V1__BILLING_EVENT__EVENT_CUSTOMER_UPDATED;
    ev.customer_updated = &cu;
    break;
  }
  *len = baton__v1__billing_event__get_packed_size(&ev);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf)
    baton__v1__billing_event__pack(&ev, buf);
  return buf;
}

/* The record's value in the chosen format (malloc'd); NULL on out of memory. */
static void *encode(const event_t *e, size_t *len) {
  if (opt.format == FMT_PROTOBUF)
    return protobuf(e, len);
  json_t *j = opt.format == FMT_DEBEZIUM ? debezium(e) : cloudevent(e);
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  *len = s ? strlen(s) : 0;
  return s;
}

/* ---- sinks ------------------------------------------------------------------------------ */

static rd_kafka_t *rk;
static uint64_t delivery_failures;

static void on_delivery(rd_kafka_t *k, const rd_kafka_message_t *m, void *opaque) {
  (void)k;
  (void)opaque;
  if (m->err && delivery_failures++ < 5)
    fprintf(stderr, "billing-generator: delivery failed: %s\n", rd_kafka_err2str(m->err));
}

static void kafka_open(void) {
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", opt.brokers, err, sizeof err) ||
      rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err) ||
      rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) ||
      rd_kafka_conf_set(conf, "queue.buffering.max.messages", "200000", err, sizeof err)) {
    fprintf(stderr, "billing-generator: kafka config: %s\n", err);
    exit(2);
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    fprintf(stderr, "billing-generator: kafka: %s\n", err);
    exit(1);
  }
}

/* Produces one record, waiting while the local queue is full. value NULL is a tombstone. The
 * key is the invoice id (the customer id for customer events), so all of one invoice's events
 * land in one partition, in order. */
static void kafka_send(const char *topic, const char *key, const void *value, size_t len,
                       const char *ctype) {
  for (;;) {
    rd_kafka_headers_t *h = rd_kafka_headers_new(1);
    if (ctype)
      rd_kafka_header_add(h, "content-type", -1, ctype, -1);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
      break;
    rd_kafka_headers_destroy(h);
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      fprintf(stderr, "billing-generator: produce to %s: %s\n", topic, rd_kafka_err2str(e));
      exit(1);
    }
    rd_kafka_poll(rk, 50);
  }
  rd_kafka_poll(rk, 0);
}

static void write_record(FILE *f, const void *v, size_t len) {
  if (opt.format == FMT_PROTOBUF) {
    /* Length-prefixed (4 bytes, big-endian), since protobuf has no delimiter of its own. */
    uint8_t n[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    fwrite(n, 1, 4, f);
    fwrite(v, 1, len, f);
  } else {
    fwrite(v, 1, len, f);
    fputc('\n', f);
  }
}

/* ---- oracle ---------------------------------------------------------------------------- */

static int cmp_unpaid(const void *a, const void *b) {
  const invoice_t *x = a, *y = b;
  if (x->customer != y->customer)
    return x->customer < y->customer ? -1 : 1;
  int c = strcmp(x->due_date, y->due_date);
  if (c)
    return c;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Every customer's expected balance (sum of unpaid amount_cents), open count and unpaid
 * invoices ordered by due date then invoice id (the read model's index order). */
static int write_oracle(const char *path) {
  qsort(open_inv, nopen, sizeof *open_inv, cmp_unpaid);
  json_t *custs = json_object();
  size_t i = 0;
  int64_t total = 0;
  for (uint32_t c = 1; c <= opt.customers; c++) {
    json_t *list = json_array();
    int64_t balance = 0;
    for (; i < nopen && open_inv[i].customer == c; i++) {
      char inv[32];
      invoice_id(inv, sizeof inv, open_inv[i].id);
      json_array_append_new(list, json_pack("{s:s, s:s, s:I}", "invoice_id", inv, "due_date",
                                            open_inv[i].due_date, "amount_cents",
                                            (json_int_t)open_inv[i].amount_cents));
      balance += open_inv[i].amount_cents;
    }
    total += balance;
    char cust[32];
    customer_id(cust, sizeof cust, c);
    json_object_set_new(custs, cust, json_pack("{s:I, s:I, s:o}", "balance", (json_int_t)balance,
                                               "open_invoices", (json_int_t)json_array_size(list),
                                               "unpaid", list));
  }
  json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:o}", "seed", (json_int_t)opt.seed, "events",
                        (json_int_t)opt.events, "open_invoices", (json_int_t)nopen,
                        "total_balance", (json_int_t)total, "customers", custs);
  int rc = json_dump_file(o, path, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  return rc;
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "usage: billing-generator [options]\n"
          "  --customers N        customers (default 100)\n"
          "  --events N           events to emit (default 10000)\n"
          "  --seed N             the same seed gives the same bytes (default 1)\n"
          "  --first-invoice N    number of the first invoice (default 1)\n"
          "  --format F           protobuf | debezium-json | cloudevents-json (default protobuf)\n"
          "  --debezium-schema    wrap Debezium envelopes in {schema, payload}\n"
          "  --out FILE           write records to FILE ('-' = stdout): JSON one per line,\n"
          "                       protobuf with a 4-byte big-endian length before each\n"
          "  --brokers LIST       produce to Kafka instead (key = invoice id)\n"
          "  --topic T            invoice events (default legacy.billing.invoices, or\n"
          "                       legacy.billing.cdc.invoices for debezium-json)\n"
          "  --customers-topic T  customer events (default legacy.billing.customers, or\n"
          "                       legacy.billing.cdc.customers for debezium-json)\n"
          "  --rate R             events per second to Kafka (default: as fast as possible)\n"
          "  --oracle FILE        write the expected balances, unpaid lists and open counts\n");
}

static uint64_t parse_u64(const char *name, const char *s, uint64_t min, uint64_t max) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max || s[0] == '-') {
    fprintf(stderr, "billing-generator: %s must be an integer in [%" PRIu64 ", %" PRIu64 "], not \"%s\"\n",
            name, min, max, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"customers", 1, 0, 'c'}, {"events", 1, 0, 'e'},        {"seed", 1, 0, 's'},
      {"format", 1, 0, 'f'},    {"out", 1, 0, 'o'},           {"oracle", 1, 0, 'O'},
      {"brokers", 1, 0, 'b'},   {"topic", 1, 0, 't'},         {"customers-topic", 1, 0, 'T'},
      {"rate", 1, 0, 'r'},      {"debezium-schema", 0, 0, 'S'}, {"first-invoice", 1, 0, 'i'},
      {"help", 0, 0, 'h'},      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
    case 'c': opt.customers = (uint32_t)parse_u64("--customers", optarg, 1, 999999); break;
    case 'e': opt.events = parse_u64("--events", optarg, 0, UINT64_MAX / 2); break;
    case 's': opt.seed = parse_u64("--seed", optarg, 0, UINT64_MAX); break;
    case 'i': opt.first_invoice = parse_u64("--first-invoice", optarg, 1, 9000000000ull); break;
    case 'f':
      if (strcmp(optarg, "protobuf") == 0) opt.format = FMT_PROTOBUF;
      else if (strcmp(optarg, "debezium-json") == 0) opt.format = FMT_DEBEZIUM;
      else if (strcmp(optarg, "cloudevents-json") == 0) opt.format = FMT_CLOUDEVENTS;
      else {
        fprintf(stderr, "billing-generator: --format must be protobuf, debezium-json or cloudevents-json, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'o': opt.out = optarg; break;
    case 'O': opt.oracle = optarg; break;
    case 'b': opt.brokers = optarg; break;
    case 't': opt.topic = optarg; break;
    case 'T': opt.customers_topic = optarg; break;
    case 'r': opt.rate = (double)parse_u64("--rate", optarg, 1, 10000000); break;
    case 'S': opt.debezium_schema = true; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc || (opt.out && opt.brokers)) {
    usage(stderr);
    return 2;
  }
  bool cdc = opt.format == FMT_DEBEZIUM;
  if (!opt.topic)
    opt.topic = cdc ? "legacy.billing.cdc.invoices" : "legacy.billing.invoices";
  if (!opt.customers_topic)
    opt.customers_topic = cdc ? "legacy.billing.cdc.customers" : "legacy.billing.customers";
  rng_state = opt.seed;
  next_invoice = opt.first_invoice;

  FILE *f = NULL;
  if (opt.brokers)
    kafka_open();
  else if (!opt.out || strcmp(opt.out, "-") == 0)
    f = stdout;
  else if (!(f = fopen(opt.out, "wb"))) {
    fprintf(stderr, "billing-generator: %s: %s\n", opt.out, strerror(errno));
    return 1;
  }

  const char *ctype = opt.format == FMT_PROTOBUF   ? "application/protobuf"
                      : opt.format == FMT_DEBEZIUM ? "application/json"
                                                   : "application/cloudevents+json";
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (uint64_t seq = 0; seq < opt.events; seq++) {
    event_t e;
    next_event(&e, seq);
    size_t len;
    void *v = encode(&e, &len);
    if (!v) {
      fprintf(stderr, "billing-generator: out of memory\n");
      return 1;
    }
    if (f) {
      write_record(f, v, len);
    } else {
      char key[32];
      if (e.kind == EV_CUSTOMER)
        customer_id(key, sizeof key, e.customer);
      else
        invoice_id(key, sizeof key, e.inv.id);
      const char *topic = e.kind == EV_CUSTOMER ? opt.customers_topic : opt.topic;
      kafka_send(topic, key, v, len, ctype);
      /* Debezium follows a delete with a tombstone for log compaction. */
      if (cdc && e.kind == EV_VOIDED)
        kafka_send(topic, key, NULL, 0, NULL);
      if (opt.rate > 0) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double due = (double)(seq + 1) / opt.rate;
        double elapsed = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
        if (due > elapsed) {
          rd_kafka_poll(rk, 0);
          usleep((useconds_t)((due - elapsed) * 1e6));
        }
      }
    }
    free(v);
  }
  int rc = 0;
  if (f && (fflush(f) != 0 || ferror(f))) {
    fprintf(stderr, "billing-generator: write failed: %s\n", strerror(errno));
    rc = 1;
  }
  if (f && f != stdout)
    fclose(f);
  if (rk) {
    if (rd_kafka_flush(rk, 60000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      fprintf(stderr, "billing-generator: %d record(s) not delivered within 60 s\n", rd_kafka_outq_len(rk));
      rc = 1;
    }
    if (delivery_failures) {
      fprintf(stderr, "billing-generator: %" PRIu64 " record(s) failed\n", delivery_failures);
      rc = 1;
    }
    rd_kafka_destroy(rk);
  }
  if (opt.oracle && write_oracle(opt.oracle) != 0) {
    fprintf(stderr, "billing-generator: cannot write %s\n", opt.oracle);
    rc = 1;
  }
  free(open_inv);
  return rc;
}
