/* read_fill: the Redis contents of the invoices read model (version 1) as the projector's
 * storage layout defines them (documents, the by_customer and unpaid_by_due indexes, the
 * balance and open_invoices aggregates, the applied offsets and `current`), written as
 * Redis protocol on stdout for `redis-cli --pipe`. bench/read.sh loads it so the read API is
 * measured on a known data set without waiting for a projection to run. Usage:
 * read_fill INVOICES CUSTOMERS. Invoice i (from 1) belongs to customer (i % CUSTOMERS) + 1;
 * two in three are unpaid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void cmd(int argc, const char *const *argv, const size_t *len) {
  printf("*%d\r\n", argc);
  for (int i = 0; i < argc; i++) {
    printf("$%zu\r\n", len[i]);
    fwrite(argv[i], 1, len[i], stdout);
    fputs("\r\n", stdout);
  }
}

static void cmd_str(int argc, const char *const *argv) {
  size_t len[8];
  for (int i = 0; i < argc; i++)
    len[i] = strlen(argv[i]);
  cmd(argc, argv, len);
}

int main(int argc, char **argv) {
  if (argc != 3)
    return 2;
  long ninv = atol(argv[1]), ncust = atol(argv[2]);
  const char *p = "bt:proj:{invoices}:v1:";
  char key[128], doc[512], cust[32], inv[32], member[96], amount[32], due[16], k2[128];
  for (long i = 1; i <= ninv; i++) {
    long c = i % ncust + 1, cents = 500 + (i * 7919) % 200000;
    int unpaid = i % 3 != 0;
    snprintf(cust, sizeof cust, "cust-%06ld", c);
    snprintf(inv, sizeof inv, "inv-%010ld", i);
    snprintf(due, sizeof due, "2024-%02ld-%02ld", 1 + i % 12, 1 + (i / 12) % 28);
    snprintf(amount, sizeof amount, "%ld", cents);
    snprintf(key, sizeof key, "%sdoc:%s", p, inv);
    snprintf(doc, sizeof doc,
             "{\"customer_id\":\"%s\",\"amount_cents\":%ld,\"due_date\":\"%s\",\"status\":\"%s\"%s}",
             cust, cents, due, unpaid ? "unpaid" : "paid",
             unpaid ? "" : ",\"paid_at\":\"2024-06-01T10:00:00Z\"");
    cmd_str(3, (const char *[]){"SET", key, doc});
    /* Index members are "{sort}\0{key}"; an unordered index has an empty sort. */
    snprintf(key, sizeof key, "%sidx:by_customer:%s", p, cust);
    member[0] = '\0';
    size_t mlen = 1 + (size_t)snprintf(member + 1, sizeof member - 1, "%s", inv);
    cmd(4, (const char *[]){"ZADD", key, "0", member}, (size_t[]){4, strlen(key), 1, mlen});
    if (!unpaid)
      continue;
    snprintf(key, sizeof key, "%sidx:unpaid_by_due:%s", p, cust);
    int n = snprintf(member, sizeof member, "s%s", due);
    mlen = (size_t)n + 1 + (size_t)snprintf(member + n + 1, sizeof member - (size_t)n - 1, "%s", inv);
    cmd(4, (const char *[]){"ZADD", key, "0", member}, (size_t[]){4, strlen(key), 1, mlen});
    snprintf(key, sizeof key, "%sagg:balance", p);
    cmd_str(4, (const char *[]){"HINCRBY", key, cust, amount});
    snprintf(k2, sizeof k2, "%sagg:open_invoices", p);
    cmd_str(4, (const char *[]){"HINCRBY", k2, cust, "1"});
  }
  snprintf(key, sizeof key, "%soff", p);
  snprintf(amount, sizeof amount, "%ld", ninv);
  cmd_str(4, (const char *[]){"HSET", key, "legacy.billing.invoices:0", amount});
  cmd_str(3, (const char *[]){"SET", "bt:proj:{invoices}:current", "1"});
  return fflush(stdout) != 0;
}
