/* Config table tests: every bad-value path names the variable and what it accepts; good
 * values parse with their units; defaults apply; secrets are masked in the start-up log. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "testsupport.h"

static char *s_str;
static char *s_enum;
static int64_t s_int, s_dur, s_size;
static bool s_bool;

static const bt_config_var_t vars[] = {
    {"BATON_T_STR", BT_CFG_STRING, "dflt", 0, 0, 0, NULL, "a string", &s_str},
    {"BATON_T_INT", BT_CFG_INT, "5", 1, 10, 0, NULL, "an int", &s_int},
    {"BATON_T_BOOL", BT_CFG_BOOL, "false", 0, 0, 0, NULL, "a bool", &s_bool},
    {"BATON_T_DUR", BT_CFG_DURATION, "2s", 10, 60000, 0, NULL, "a duration", &s_dur},
    {"BATON_T_SIZE", BT_CFG_SIZE, "1KiB", 0, 0, 0, NULL, "a size", &s_size},
    {"BATON_T_ENUM", BT_CFG_ENUM, "b", 0, 0, 0, "a|b|c", "an enum", &s_enum},
};

static void clear_env(void) {
  for (size_t i = 0; i < BT_ARRAY_LEN(vars); i++)
    unsetenv(vars[i].name);
  unsetenv("BATON_T_REQ");
}

static void test_defaults(void **state) {
  clear_env();
  char err[256] = "";
  assert_int_equal(bt_config_load(vars, BT_ARRAY_LEN(vars), err, sizeof err), 0);
  assert_string_equal(s_str, "dflt");
  assert_int_equal(s_int, 5);
  assert_false(s_bool);
  assert_int_equal(s_dur, 2000);
  assert_int_equal(s_size, 1024);
  assert_string_equal(s_enum, "b");
}

static void test_units(void **state) {
  clear_env();
  struct { const char *name, *value; int64_t want; int64_t *target; } cases[] = {
      {"BATON_T_DUR", "250ms", 250, &s_dur}, {"BATON_T_DUR", "1m", 60000, &s_dur},
      {"BATON_T_DUR", "1500", 1500, &s_dur}, {"BATON_T_SIZE", "64KiB", 65536, &s_size},
      {"BATON_T_SIZE", "16MiB", 16 << 20, &s_size}, {"BATON_T_SIZE", "2g", (int64_t)2 << 30, &s_size},
      {"BATON_T_INT", "10", 10, &s_int},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    clear_env();
    setenv(cases[i].name, cases[i].value, 1);
    char err[256] = "";
    assert_int_equal(bt_config_load(vars, BT_ARRAY_LEN(vars), err, sizeof err), 0);
    assert_int_equal(*cases[i].target, cases[i].want);
  }
  setenv("BATON_T_BOOL", "yes", 1);
  char err[256];
  assert_int_equal(bt_config_load(vars, BT_ARRAY_LEN(vars), err, sizeof err), 0);
  assert_true(s_bool);
}

/* Every way a value can be wrong, with the words the message must contain. */
static void test_bad_values_name_the_variable(void **state) {
  struct { const char *name, *value, *must1, *must2; } cases[] = {
      {"BATON_T_INT", "abc", "BATON_T_INT=abc is not valid", "an integer"},
      {"BATON_T_INT", "11", "BATON_T_INT=11 is out of range", "from 1 to 10"},
      {"BATON_T_INT", "0", "out of range", "from 1 to 10"},
      {"BATON_T_INT", "-3", "BATON_T_INT=-3 is not valid", "an integer"},
      {"BATON_T_INT", "5x", "is not valid", "an integer"},
      {"BATON_T_BOOL", "maybe", "BATON_T_BOOL=maybe is not valid", "true or false"},
      {"BATON_T_DUR", "5 parsecs", "BATON_T_DUR=5 parsecs is not valid", "250ms, 5s or 2m"},
      {"BATON_T_DUR", "5ms", "out of range", "from 10 to 60000 ms"},
      {"BATON_T_DUR", "2h", "BATON_T_DUR=2h is out of range", "ms"},
      {"BATON_T_SIZE", "lots", "BATON_T_SIZE=lots is not valid", "64KiB"},
      {"BATON_T_SIZE", "99999999999999999999", "is not valid", "size"},
      {"BATON_T_ENUM", "d", "BATON_T_ENUM=d is not valid", "a|b|c"},
      {"BATON_T_ENUM", "", "BATON_T_ENUM= is not valid", "a|b|c"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    clear_env();
    setenv(cases[i].name, cases[i].value, 1);
    char err[256] = "";
    assert_int_not_equal(bt_config_load(vars, BT_ARRAY_LEN(vars), err, sizeof err), 0);
    if (!strstr(err, cases[i].must1) || !strstr(err, cases[i].must2))
      fail_msg("case %zu: message \"%s\" lacks \"%s\" or \"%s\"", i, err, cases[i].must1,
               cases[i].must2);
  }
}

static void test_required(void **state) {
  clear_env();
  char *req = NULL;
  bt_config_var_t v[] = {{"BATON_T_REQ", BT_CFG_STRING, NULL, 0, 0, BT_CFG_REQUIRED, NULL,
                          "the thing we need", &req}};
  char err[256] = "";
  assert_int_not_equal(bt_config_load(v, 1, err, sizeof err), 0);
  assert_non_null(strstr(err, "BATON_T_REQ is required"));
  setenv("BATON_T_REQ", "here", 1);
  assert_int_equal(bt_config_load(v, 1, err, sizeof err), 0);
  assert_string_equal(req, "here");
}

static void test_help_lists_every_variable(void **state) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  bt_config_print_help(f, vars, BT_ARRAY_LEN(vars));
  fclose(f);
  for (size_t i = 0; i < BT_ARRAY_LEN(vars); i++) {
    char want[64];
    snprintf(want, sizeof want, "| `%s` |", vars[i].name);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, vars[i].help));
  }
  free(text);
}

/* Runs bt_config_log with stdout sent to a file; returns what it wrote (malloc'd). */
static char *capture_config_log(const bt_config_var_t *v, size_t n) {
  fflush(stdout);
  char path[] = "/tmp/bt-config-log-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  int saved = dup(1);
  dup2(fd, 1);
  bt_config_log(v, n);
  bt_log_flush();
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  char *buf = calloc(1, 65536);
  ssize_t got = pread(fd, buf, 65535, 0);
  close(fd);
  unlink(path);
  assert_true(got > 0);
  return buf;
}

/* The effective-config log line must not show a DSN's password or a token. */
static void test_secrets_masked_in_log(void **state) {
  char *dsn = NULL, *tok = NULL;
  bt_config_var_t v[] = {
      {"BATON_T_DSN", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET_URL, NULL, "dsn", &dsn},
      {"BATON_T_TOK", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET, NULL, "tok", &tok},
  };
  setenv("BATON_T_DSN", "postgresql://app:s3cretpw@db:5432/x", 1);
  setenv("BATON_T_TOK", "tok-abcdef", 1);
  char err[256];
  assert_int_equal(bt_config_load(v, 2, err, sizeof err), 0);
  char *buf = capture_config_log(v, 2);
  assert_null(strstr(buf, "s3cretpw"));
  assert_null(strstr(buf, "tok-abcdef"));
  assert_non_null(strstr(buf, "postgresql://app:***@db:5432/x"));
  free(buf);
  unsetenv("BATON_T_DSN");
  unsetenv("BATON_T_TOK");
}

/* A list of DSNs in every form the config takes: keyword=value with plain, quoted and escaped
 * passwords, sslpassword before password (the old masker matched "password=" inside it),
 * URIs with a password in the user info and in the query, a Redis URL, and a space-separated
 * pair of URIs. No secret may reach the start-up log line; the rest stays readable. */
static void test_every_dsn_of_a_list_masked(void **state) {
  char *dsn = NULL;
  bt_config_var_t v[] = {
      {"BATON_T_DSNS", BT_CFG_STRING, NULL, 0, 0, BT_CFG_SECRET_URL, NULL, "dsns", &dsn},
  };
  setenv("BATON_T_DSNS",
         "host=db1 user=app sslpassword=sslpw0 password=plainpw1 dbname=x,"
         "host=db2 password='quoted pw2' sslpassword='ssl\\'pw3' dbname=y, "
         "password = spacedpw4 host=db3,"
         "postgres://u:uripw5@h5:5432,h6:5433/z?sslpassword=querypw6&application_name=a5,"
         "postgresql://h7/w?pass%77ord=encpw7,"
         "redis://ru:redispw8@r8:6379/0,"
         "host=db9 passwrd=typopw9 dbname=t "
         "postgres://v:sppw10@h10/a postgres://w:sppw11@h11/b",
         1);
  char err[256];
  assert_int_equal(bt_config_load(v, 1, err, sizeof err), 0);
  char *buf = capture_config_log(v, 1);
  const char *secrets[] = {"sslpw0", "plainpw1", "quoted pw2", "pw3",    "spacedpw4", "uripw5",
                           "querypw6", "encpw7", "redispw8", "typopw9", "sppw10",   "sppw11"};
  for (size_t i = 0; i < BT_ARRAY_LEN(secrets); i++)
    if (strstr(buf, secrets[i]))
      fail_msg("secret \"%s\" in the log line: %s", secrets[i], buf);
  const char *visible[] = {"host=db1 user=app sslpassword=*** password=*** dbname=x",
                           "host=db2 password=*** sslpassword=*** dbname=y",
                           "password=*** host=db3",
                           "postgres://u:***@h5:5432,h6:5433/z?sslpassword=***&application_name=a5",
                           "postgresql://h7/w?pass%77ord=***",
                           "redis://ru:***@r8:6379/0",
                           "postgres://v:***@h10/a postgres://w:***@h11/b"};
  for (size_t i = 0; i < BT_ARRAY_LEN(visible); i++)
    if (!strstr(buf, visible[i]))
      fail_msg("\"%s\" missing from the log line: %s", visible[i], buf);
  free(buf);
  unsetenv("BATON_T_DSNS");
}

/* Masking alone, on the edge cases: empty input, a lone word, an unterminated quote. */
static void test_mask_edge_cases(void **state) {
  struct { const char *in, *want; } cases[] = {
      {"", ""},
      {"host=a", "host=a"},
      {"justapassword", "***"},
      {"host=a password='unterminated", "host=a password=***"},
      {"host=a bogus", "***"},
      {"redis://onlysecret@r:6379", "redis://***@r:6379"},
      {"postgres://user@h/db", "postgres://user@h/db"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    bt_buf_t b;
    bt_buf_init(&b, 0);
    assert_int_equal(bt_config_mask_secrets(cases[i].in, &b), 0);
    assert_int_equal(bt_buf_append(&b, "", 0), 0);
    if (strcmp(b.data, cases[i].want) != 0)
      fail_msg("mask(\"%s\") = \"%s\", want \"%s\"", cases[i].in, b.data, cases[i].want);
    bt_buf_free(&b);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_units),
      cmocka_unit_test(test_bad_values_name_the_variable),
      cmocka_unit_test(test_required),
      cmocka_unit_test(test_help_lists_every_variable),
      cmocka_unit_test(test_secrets_masked_in_log),
      cmocka_unit_test(test_every_dsn_of_a_list_masked),
      cmocka_unit_test(test_mask_edge_cases),
  };
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
