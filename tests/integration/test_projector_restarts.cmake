# it_projector_restarts stops and restarts the stack's Redis and Postgres: no other test may
# run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
# Runs in the second fault lane (see tests/CMakeLists.txt), beside the other long kill/restart tests.
set(BATON_FAULT_LANE 2)
