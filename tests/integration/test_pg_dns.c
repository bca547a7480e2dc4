/* Host names reach libpq only as resolved hostaddr lists: names from a multi-host DSN, from
 * PGHOST and from a service file are looked up off the loop (counted by baton_pg_lookups_total), and the lists handed
 * to libpq have equal lengths. */
#include "log.h"
#include "pg_hosts.h"
#include "test_pg_util.h"

static int setup(void **state) { return pg_setup("pg_dns"); }

/* The stack's DSN as keywords (user, password, port, dbname), without any host. */
static void dsn_without_host(char *out, size_t len) {
  char *why = NULL;
  PQconninfoOption *o = PQconninfoParse(bt_test_env("BATON_PG_DSN"), &why);
  assert_non_null(o);
  size_t n = (size_t)snprintf(out, len, "application_name=%s", appname);
  for (PQconninfoOption *x = o; x->keyword; x++)
    if (x->val && *x->val &&
        (!strcmp(x->keyword, "user") || !strcmp(x->keyword, "password") ||
         !strcmp(x->keyword, "port") || !strcmp(x->keyword, "dbname")))
      n += (size_t)snprintf(out + n, len - n, " %s='%s'", x->keyword, x->val);
  PQconninfoFree(o);
}

static void query_ok(bt_pg_pool_t *p) {
  outcome_t o = {0};
  const char *v[] = {"41"};
  assert_int_equal(bt_pg_pool_query(p, "SELECT $1::int + 1", 1, v, on_result, &o), 0);
  wait_outcome(&o, 15000);
  if (o.err)
    fail_msg("query failed: %s", o.errmsg);
  assert_int_equal(o.first, 42);
}

/* "host=a,b": a name that does not resolve, then one that does. libpq gets the second's
 * addresses and connects; both names were looked up by the runtime. */
static void test_multi_host(void **state) {
  char base[512], d[1024];
  dsn_without_host(base, sizeof base);
  snprintf(d, sizeof d, "%s host=no-such-host.invalid,localhost", base);
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.dsn = d, .size = 1, .stats = &stats});
  query_ok(p);
  assert_true(stats.lookups.value >= 2);
  bt_pg_pool_close(p);
  loop_finish();
}

/* No host in the DSN: libpq would take PGHOST and resolve it itself, on the loop. */
static void test_pghost_env(void **state) {
  char d[512];
  dsn_without_host(d, sizeof d);
  setenv("PGHOST", "localhost", 1);
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.dsn = d, .size = 1, .stats = &stats});
  query_ok(p);
  unsetenv("PGHOST");
  assert_true(stats.lookups.value >= 1);
  bt_pg_pool_close(p);
  loop_finish();
}

/* service=: the host comes from the service file, which libpq reads only while connecting. */
static void test_service(void **state) {
  char path[128], svc[64], base[512], d[640];
  snprintf(path, sizeof path, "/tmp/bt_pg_service_%d.conf", (int)getpid());
  snprintf(svc, sizeof svc, "bt_svc_%d", (int)getpid());
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "[%s]\nhost=localhost\n", svc);
  fclose(f);
  setenv("PGSERVICEFILE", path, 1);
  dsn_without_host(base, sizeof base);
  snprintf(d, sizeof d, "%s service=%s", base, svc);
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.dsn = d, .size = 1, .stats = &stats});
  query_ok(p);
  unsetenv("PGSERVICEFILE");
  unlink(path);
  assert_true(stats.lookups.value >= 1);
  bt_pg_pool_close(p);
  loop_finish();
}

/* The lists: a looked-up entry repeats once per address, the others keep their hostaddr
 * ("" for a socket directory or an IP), and every list has one element per entry. */
static void test_lists(void **state) {
  char err[256] = "";
  bt_pg_hosts_t h;
  assert_int_equal(
      bt_pg_hosts_parse(&h, "host=db.example,127.0.0.1,/tmp port=1,2,3 dbname=x", err, sizeof err),
      0);
  assert_int_equal(h.n, 3);
  assert_int_equal(h.nlookup, 1);
  bt_addr_list_t addrs[3] = {{.n = 2, .addr = {"10.0.0.1", "::1"}}};
  char *host, *hostaddr, *port;
  assert_int_equal(bt_pg_hosts_lists(&h, addrs, &host, &hostaddr, &port), 4);
  assert_string_equal(host, "db.example,db.example,127.0.0.1,/tmp");
  assert_string_equal(hostaddr, "10.0.0.1,::1,,");
  assert_string_equal(port, "1,1,2,3");
  free(host);
  free(hostaddr);
  free(port);
  bt_pg_hosts_free(&h);
  /* A port list that does not match the hosts is refused, naming the keyword. */
  assert_int_equal(bt_pg_hosts_parse(&h, "host=a,b,c port=1,2", err, sizeof err), BT_EINVAL);
  assert_non_null(strstr(err, "port"));
  /* PGHOST applies when the DSN names no host; the DSN's own host wins over it. */
  setenv("PGHOST", "envhost", 1);
  assert_int_equal(bt_pg_hosts_parse(&h, "dbname=x", err, sizeof err), 0);
  assert_int_equal(h.nlookup, 1);
  assert_string_equal(h.v[0].host, "envhost");
  bt_pg_hosts_free(&h);
  assert_int_equal(bt_pg_hosts_parse(&h, "host=10.1.1.1 dbname=x", err, sizeof err), 0);
  assert_int_equal(h.nlookup, 0);
  bt_pg_hosts_free(&h);
  unsetenv("PGHOST");
  loop_finish();
}

int main(void) {
  bt_log_init("test_pg_dns", BT_LOG_INFO);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
      cmocka_unit_test_setup_teardown(test_multi_host, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pghost_env, setup, teardown),
      cmocka_unit_test_setup_teardown(test_service, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
