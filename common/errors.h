/* Error codes and bug-report helpers shared by the whole runtime.
 * Functions return 0 or a negative BT_E* code; codes map onto errno values as libuv's do. */
#ifndef BT_ERRORS_H
#define BT_ERRORS_H

#include <errno.h>

#define BT_MUSTCHECK __attribute__((warn_unused_result))
#define BT_PRINTF(f, a) __attribute__((format(printf, f, a)))

enum {
  BT_OK = 0,
  BT_EINVAL = -EINVAL,        /* bad argument or input */
  BT_ENOMEM = -ENOMEM,        /* allocation failed */
  BT_EAGAIN = -EAGAIN,        /* try again later: a queue or limit is full */
  BT_ETIMEDOUT = -ETIMEDOUT,  /* a deadline passed */
  BT_ECONNRESET = -ECONNRESET,/* a dependency connection was lost */
  BT_ENOTCONN = -ENOTCONN,    /* a dependency is not connected (yet) */
  BT_ECANCELED = -ECANCELED,  /* the operation was cancelled (shutdown) */
  BT_EIO = -EIO,              /* a dependency reported an error */
  BT_ENOENT = -ENOENT,        /* not found */
  BT_ERANGE = -ERANGE,        /* value out of range */
  BT_ECONFLICT = -EEXIST,     /* a concurrency or uniqueness conflict */
};

/* Returns a static description of a BT_E* code (or any negative errno). */
const char *bt_strerror(int err);

/* Logs a fatal message and aborts. For bugs and start-up failures only. */
void bt_fatal(const char *fmt, ...) BT_PRINTF(1, 2) __attribute__((noreturn));

#define BT_ASSERT(cond)                                                              \
  do {                                                                               \
    if (__builtin_expect(!(cond), 0))                                                \
      bt_fatal("assertion failed: %s (%s:%d)", #cond, __FILE__, __LINE__);           \
  } while (0)

#define BT_UNUSED(x) ((void)(x))
#define BT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define BT_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

#endif
