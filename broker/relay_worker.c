/* The broker's side of the outbox relay: decoding a row into a CloudEvent, the topic rules
 * (a valid name, allowed by BATON_BROKER_TOPICS) and the binary-mode record, shared by the
 * event-store and service-outbox sources. The relay itself (lease, rounds, progress, dead
 * letters) is the runtime's, common/outbox_relay.c. */
#include "relay_worker.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publish.h"

/* A header per context attribute, one per extension, and the source's own. */
#define MAX_HEADERS (12 + BROKER_MAX_EXTENSIONS)

void relay_worker_config(const broker_t *b, const char *label, const char *lease,
                         bt_outbox_relay_config_t *cfg) {
  *cfg = (bt_outbox_relay_config_t){
      .label = label,
      .lease_name = lease,
      .metrics_prefix = "baton_broker_relay",
      .lease_ms = (uint64_t)b->cfg.relay_lease_ms,
      .poll_ms = (uint64_t)b->cfg.relay_poll_ms,
      .batch = (size_t)b->cfg.relay_batch,
      .dead_letter_topic = b->cfg.relay_dead_letter_topic,
      .dead_letter_after = (unsigned)b->cfg.relay_dead_letter_after,
      .max_failed_rounds = (unsigned)b->cfg.relay_max_failed_rounds,
  };
}

const char *relay_worker_topic_refused(const broker_t *b, const char *topic, char *why,
                                       size_t whysz) {
  if (!topic)
    snprintf(why, whysz, "no topic name fits");
  else if (!broker_topic_name_valid(topic))
    snprintf(why, whysz, "'%.100s' is not a valid Kafka topic name", topic);
  else if (!broker_topic_allowed(b->cfg.topics, topic))
    snprintf(why, whysz, "topic '%.100s' is not allowed by BATON_BROKER_TOPICS", topic);
  else
    return NULL;
  return why;
}

int relay_worker_produce(bt_outbox_relay_t *r, int64_t position, const char *topic,
                         const char *key, const broker_event_t *ev,
                         const bt_kafka_header_t *extra, size_t nextra, const char *why) {
  bt_kafka_header_t hdrs[MAX_HEADERS];
  size_t nh = broker_event_headers(ev, &r->arena, hdrs, MAX_HEADERS - nextra);
  for (size_t i = 0; i < nextra; i++)
    hdrs[nh++] = extra[i];
  bt_kafka_record_t rec = {topic, BT_KAFKA_PARTITION_ANY, key, key ? strlen(key) : 0,
                           ev->data, ev->data ? ev->data_len : 0, hdrs, nh};
  if (why)
    return bt_outbox_relay_reject(r, position, &rec, why);
  return bt_outbox_relay_produce(r, position, &rec);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static char *decode_bytea(bt_outbox_relay_t *w, const char *text, size_t *len) {
  /* Every read transaction sets bytea_output to hex, so this is the only format we see. */
  if (text[0] != '\\' || text[1] != 'x')
    return NULL;
  const char *h = text + 2;
  size_t n = strlen(h);
  if (n % 2)
    return NULL;
  char *out = bt_arena_alloc(&w->arena, n / 2 + 1);
  if (!out)
    return NULL;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return NULL;
    out[i] = (char)(hi << 4 | lo);
  }
  out[n / 2] = '\0';
  *len = n / 2;
  return out;
}

static int decode_extensions(bt_outbox_relay_t *w, broker_event_t *ev, const char *text,
                            const char *const *skip) {
  if (!text)
    return 0;
  json_t *obj = json_loads(text, 0, NULL);
  if (!json_is_object(obj)) {
    json_decref(obj);
    return -1;
  }
  int rc = 0;
  const char *name;
  json_t *v;
  json_object_foreach(obj, name, v) {
    bool skipped = false;
    for (size_t i = 0; skip && skip[i] && !skipped; i++)
      skipped = strcmp(skip[i], name) == 0;
    if (skipped || json_is_null(v))
      continue;
    if (ev->next == BROKER_MAX_EXTENSIONS) {
      rc = -1;
      break;
    }
    char *nm = bt_arena_strdup(&w->arena, name);
    char *val;
    if (json_is_string(v)) {
      val = bt_arena_strdup(&w->arena, json_string_value(v));
    } else {
      char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      val = s ? bt_arena_strdup(&w->arena, s) : NULL;
      free(s);
    }
    if (!nm || !val) {
      rc = -1;
      break;
    }
    ev->ext[ev->next++] = (broker_ext_t){nm, val};
  }
  json_decref(obj);
  return rc;
}

int relay_worker_payload(bt_outbox_relay_t *r, broker_event_t *ev, const char *data,
                         const char *extensions, const char *const *skip, char *why, size_t whysz) {
  if (data && !(ev->data = decode_bytea(r, data, &ev->data_len))) {
    snprintf(why, whysz, "data is not a hex bytea value (or out of memory)");
    return -1;
  }
  if (decode_extensions(r, ev, extensions, skip) != 0) {
    snprintf(why, whysz, "extensions is not a JSON object of at most %d members",
             BROKER_MAX_EXTENSIONS);
    return -1;
  }
  return 0;
}
