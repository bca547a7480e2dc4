# it_stack restarts Postgres and Redis through ./dev: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
