# it_relay_leases runs several brokers on the store and on outbox databases of its own, and
# injects Produce errors into devkafka: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 400)
# Runs in the second fault lane (see tests/CMakeLists.txt), beside the other long kill/restart tests.
set(BATON_FAULT_LANE 2)
