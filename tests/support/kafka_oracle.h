/* A plain librdkafka reader for tests: reads a whole topic back from the beginning to its
 * current end, independently of the runtime's consumer adapter, so tests check what Kafka
 * really holds. Blocking; test code only. */
#ifndef BT_KAFKA_ORACLE_H
#define BT_KAFKA_ORACLE_H

#include <stddef.h>
#include <stdint.h>

#define BT_TEST_KMSG_MAX_HEADERS 48

typedef struct bt_test_kmsg {
  int32_t partition;
  int64_t offset;
  char *key;   /* NUL-terminated copy, NULL when the record has no key */
  char *value; /* NUL-terminated copy, NULL for a null value */
  size_t value_len;
  unsigned nheaders;
  char *hname[BT_TEST_KMSG_MAX_HEADERS];
  char *hvalue[BT_TEST_KMSG_MAX_HEADERS];
} bt_test_kmsg_t;

/* Reads every record of `topic` (all partitions, offset 0 to the high watermark at the time of
 * the call). Returns the number of records and sets *out (free with bt_test_kmsgs_free), or -1
 * when the topic cannot be read within timeout_ms. */
long bt_test_kafka_read_all(const char *brokers, const char *topic, int timeout_ms,
                            bt_test_kmsg_t **out);
/* Value of a header, or NULL. */
const char *bt_test_kmsg_header(const bt_test_kmsg_t *m, const char *name);
void bt_test_kmsgs_free(bt_test_kmsg_t *msgs, long n);

/* Creates a topic with `partitions` partitions through the devkafka control endpoint
 * ($BATON_DEVKAFKA_CONTROL). Returns 0 on success. */
int bt_test_kafka_create_topic(const char *topic, int partitions);
/* Takes every devkafka broker down (up = 0) or up (up = 1). Returns 0 on success. */
int bt_test_kafka_brokers(int up);

#endif
