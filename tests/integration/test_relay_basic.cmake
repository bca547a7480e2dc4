# The store relay is one leader per database: a relay test must not share the database with
# another test's brokers, which could win the lease and relay with their own routes.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
