# it_projector_poison injects Produce errors through devkafka (cluster-wide): no other test may
# use Kafka meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
