# it_relay_crash takes devkafka's brokers down, kills brokers with SIGKILL and restarts
# Postgres (./dev pg-restart); the store relay
# is one leader per database: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
