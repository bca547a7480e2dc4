# it_store_pgrestart restarts Postgres through ./dev pg-restart: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
