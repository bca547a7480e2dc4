/* Config table tests: every bad-value path names the variable and what it accepts; good
 * values parse with their units; defaults apply; secrets are masked in the start-up log. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
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
  fflush(stdout);
  char path[] = "/tmp/bt-config-log-XXXXXX";
  int fd = mkstemp(path);
  int saved = dup(1);
  dup2(fd, 1);
  bt_config_log(v, 2);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  char buf[4096] = "";
  lseek(fd, 0, SEEK_SET);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  unlink(path);
  assert_true(n > 0);
  assert_null(strstr(buf, "s3cretpw"));
  assert_null(strstr(buf, "tok-abcdef"));
  assert_non_null(strstr(buf, "postgresql://app:***@db:5432/x"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_units),
      cmocka_unit_test(test_bad_values_name_the_variable),
      cmocka_unit_test(test_required),
      cmocka_unit_test(test_help_lists_every_variable),
      cmocka_unit_test(test_secrets_masked_in_log),
  };
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
