/* BATON_KAFKA_PROPERTIES: librdkafka settings passed through to every Kafka client (security,
 * SASL, TLS, tuning), as "name=value" entries separated by commas. A backslash escapes a comma
 * or a backslash inside a value ("a\,b"). Settings the runtime owns (idempotence, acks, group,
 * commit mode, bootstrap list...) are refused, because overriding them silently would break
 * the guarantees the adapters document. */
#ifndef BT_KAFKA_PROPS_H
#define BT_KAFKA_PROPS_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "errors.h"

/* Most entries in one list and most bytes in one entry; longer input is refused. */
#define BT_KAFKA_PROPS_MAX_ENTRIES 64
#define BT_KAFKA_PROPS_MAX_ENTRY 4096

/* Parses props (NULL or "" = nothing) and sets every entry on conf. On a bad entry fills
 * errstr (256 bytes) naming the entry's position and name (never a secret value) and returns
 * BT_EINVAL; conf may then hold the entries before it (the caller destroys it). */
int bt_kafka_props_apply(rd_kafka_conf_t *conf, const char *props, char *errstr) BT_MUSTCHECK;

/* Whether a property's value is a secret that logs must not show: passwords, client secrets,
 * private keys and JAAS/OAUTHBEARER configs that embed them. */
bool bt_kafka_prop_is_secret(const char *name);

/* Writes props with every secret value replaced by "***" into out (always NUL-terminated,
 * truncated to outsz). Entries that fail to parse are shown by name only. */
void bt_kafka_props_mask(const char *props, char *out, size_t outsz);

#endif
