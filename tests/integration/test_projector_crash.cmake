# it_projector_crash kills the projector 20 times and waits for devkafka's group to settle after
# each kill; on a machine busy with other tests (and under the sanitizers) a join can take long
# enough to eat its budget, so it runs alone.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
# Runs in the second fault lane (see tests/CMakeLists.txt), beside the other long kill/restart tests.
set(BATON_FAULT_LANE 2)
