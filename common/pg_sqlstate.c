/* SQLSTATE classification (Postgres's errcodes appendix): the retry policy of every service
 * that writes to Postgres, so the saga engine and the projector agree on it. */
#include "pg_sqlstate.h"

#include <string.h>

bt_pg_class_t bt_pg_sqlstate_class(const char *s) {
  if (!s || strlen(s) != 5)
    return BT_PG_ERROR;
  if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
    return BT_PG_RETRY;
  if (strcmp(s, "23505") == 0)
    return BT_PG_CONFLICT;
  /* Class 08 errors come from the connection, class 57 from an operator or the server going
   * away (57P01 admin shutdown, 57014 cancel or statement_timeout): a statement hit by them may
   * have committed before the error was raised, as far as the client can tell. */
  if (strncmp(s, "08", 2) == 0 || strncmp(s, "57", 2) == 0)
    return BT_PG_UNKNOWN;
  return BT_PG_ERROR;
}

bt_pg_class_t bt_pg_result_class(const bt_pg_result_t *r) {
  switch (r->err) {
  case 0: return BT_PG_OK;
  case BT_EIO:
    return r->error ? bt_pg_sqlstate_class(PQresultErrorField(r->error, PG_DIAG_SQLSTATE))
                    : BT_PG_ERROR;
  case BT_ECONNRESET: return BT_PG_UNKNOWN;
  case BT_ENOTCONN:
  case BT_ETIMEDOUT: return BT_PG_RETRY;
  default: return BT_PG_ERROR;
  }
}

const char *bt_pg_class_name(bt_pg_class_t c) {
  switch (c) {
  case BT_PG_OK: return "ok";
  case BT_PG_RETRY: return "retry";
  case BT_PG_CONFLICT: return "conflict";
  case BT_PG_UNKNOWN: return "unknown";
  case BT_PG_ERROR: return "error";
  }
  return "?";
}
