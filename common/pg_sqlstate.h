/* bt_pg_sqlstate: what a caller should do about a failed Postgres request, decided in one
 * place from its SQLSTATE (or from the pool's own error code when Postgres never answered). */
#ifndef BT_PG_SQLSTATE_H
#define BT_PG_SQLSTATE_H

#include "pg_pool.h"

typedef enum {
  BT_PG_OK,       /* committed */
  BT_PG_RETRY,    /* nothing was committed and the same request may well succeed again:
                     serialization failure 40001, deadlock 40P01, or never sent */
  BT_PG_CONFLICT, /* a unique constraint refused it (23505): retrying will not help */
  BT_PG_UNKNOWN,  /* it may or may not have committed: connection errors (class 08), an
                     operator intervention (class 57: shutdown, cancel, timeout), or a
                     connection lost in flight. Only idempotent requests may be retried. */
  BT_PG_ERROR,    /* anything else: a bug or bad input, do not retry */
} bt_pg_class_t;

/* Classifies a SQLSTATE (five characters; NULL or malformed is BT_PG_ERROR). */
bt_pg_class_t bt_pg_sqlstate_class(const char *sqlstate);
/* Classifies a request's outcome: err 0 is BT_PG_OK, BT_EIO follows the SQLSTATE of r->error,
 * BT_ECONNRESET is BT_PG_UNKNOWN, BT_ENOTCONN/BT_ETIMEDOUT (nothing was sent) are BT_PG_RETRY,
 * and BT_ECANCELED (the pool is closing) is BT_PG_ERROR. */
bt_pg_class_t bt_pg_result_class(const bt_pg_result_t *r);
/* "ok", "retry", "conflict", "unknown", "error". */
const char *bt_pg_class_name(bt_pg_class_t c);

#endif
