/* proj_layout: the names of a projection's Redis keys and the encoding of index members, as
 * the storage layout contract fixes them (README, "Projector storage layout"). The writer and
 * the read API both use these, so the two cannot drift apart. */
#ifndef PROJ_LAYOUT_H
#define PROJ_LAYOUT_H

#include <jansson.h>
#include <stddef.h>

#include "buf.h"
#include "errors.h"

/* "bt:proj:{P}:" — the prefix of the projection's version-independent keys (current,
 * building). Returns the length written (truncated like snprintf). */
int proj_layout_projection_prefix(char *out, size_t outsz, const char *projection);
/* "bt:proj:{P}:v{n}:" — the prefix of every key of version n: doc:{key}, idx:{index}:{value},
 * agg:{aggregate}, off, meta. */
int proj_layout_version_prefix(char *out, size_t outsz, const char *projection, int version);

/* Appends the index member of key with sort value order (NULL: an index without order):
 * `{sort}\x00{key}`, where sort is "" without order, "n" + 20 digits of
 * (uint64)v ^ 0x8000000000000000 for a JSON integer v (so ZRANGEBYLEX sorts numerically), and
 * "s" + the text otherwise (a string's characters, any other value's compact JSON). */
int proj_layout_member(bt_buf_t *out, json_t *order, const char *key) BT_MUSTCHECK;

#endif
