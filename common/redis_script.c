/* Redis scripts by SHA-1 with the NOSCRIPT fallback. Both forms of a run are formatted up
 * front (EVALSHA to send, EVAL kept for a NOSCRIPT answer) and handed to the client, which
 * owns the retry so that single commands and batches behave the same. */
#include "redis_script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bt_redis_script {
  char sha1[2 * BT_SHA1_LEN + 1];
  size_t len;
  char source[];
};

int bt_redis_script_new(bt_redis_script_t **out, const char *source, size_t len) {
  if (len == 0)
    return BT_EINVAL;
  bt_redis_script_t *s = malloc(sizeof *s + len + 1);
  if (!s)
    return BT_ENOMEM;
  memcpy(s->source, source, len);
  s->source[len] = '\0';
  s->len = len;
  bt_sha1_hex(source, len, s->sha1);
  *out = s;
  return 0;
}

void bt_redis_script_free(bt_redis_script_t *s) { free(s); }

const char *bt_redis_script_sha1(const bt_redis_script_t *s) { return s->sha1; }

/* Formats "EVALSHA sha nkeys args..." into *cmd and "EVAL source nkeys args..." into *fb
 * (both freed with redisFreeCommand). Returns 0, BT_EINVAL or BT_ENOMEM. */
static int format_both(const bt_redis_script_t *s, int nkeys, int argc, const char *const *argv,
                       const size_t *argvlen, char **cmd, int *len, char **fb, int *flen) {
  if (nkeys < 0 || nkeys > argc || argc < 0)
    return BT_EINVAL;
  const char **av = malloc((size_t)(argc + 3) * sizeof *av);
  size_t *al = malloc((size_t)(argc + 3) * sizeof *al);
  char nk[16];
  int rc = av && al ? 0 : BT_ENOMEM;
  if (rc == 0) {
    av[2] = nk;
    al[2] = (size_t)snprintf(nk, sizeof nk, "%d", nkeys);
    for (int i = 0; i < argc; i++) {
      av[i + 3] = argv[i];
      al[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    av[0] = "EVALSHA", al[0] = 7, av[1] = s->sha1, al[1] = 2 * BT_SHA1_LEN;
    *len = redisFormatCommandArgv(cmd, argc + 3, av, al);
    av[0] = "EVAL", al[0] = 4, av[1] = s->source, al[1] = s->len;
    *flen = redisFormatCommandArgv(fb, argc + 3, av, al);
    if (*len < 0 || *flen < 0) {
      redisFreeCommand(*len < 0 ? NULL : *cmd);
      redisFreeCommand(*flen < 0 ? NULL : *fb);
      rc = BT_ENOMEM;
    }
  }
  free(av);
  free(al);
  return rc;
}

int bt_redis_script_run(bt_redis_script_t *s, bt_redis_t *r, bt_redis_reply_cb cb, void *arg,
                        int nkeys, int argc, const char *const *argv, const size_t *argvlen) {
  char *cmd, *fb;
  int len, flen;
  int rc = format_both(s, nkeys, argc, argv, argvlen, &cmd, &len, &fb, &flen);
  if (rc != 0)
    return rc;
  rc = bt__redis_command_fallback(r, cb, arg, cmd, (size_t)len, fb, (size_t)flen);
  redisFreeCommand(cmd);
  redisFreeCommand(fb);
  return rc;
}

int bt_redis_batch_add_script(bt_redis_batch_t *b, const bt_redis_script_t *s, int nkeys,
                              int argc, const char *const *argv, const size_t *argvlen) {
  char *cmd, *fb;
  int len, flen;
  int rc = format_both(s, nkeys, argc, argv, argvlen, &cmd, &len, &fb, &flen);
  if (rc != 0)
    return rc; /* the batch itself stays usable: nothing was added */
  rc = bt__redis_batch_add_fallback(b, cmd, (size_t)len, fb, (size_t)flen);
  redisFreeCommand(cmd);
  redisFreeCommand(fb);
  return rc;
}
