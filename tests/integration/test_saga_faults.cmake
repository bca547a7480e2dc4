# Takes every devkafka broker down and restarts Postgres: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
# Runs in the second fault lane (see tests/CMakeLists.txt), beside the other long kill/restart tests.
set(BATON_FAULT_LANE 2)
