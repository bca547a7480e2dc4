# it_kafka_gapless injects a Produce error through devkafka (cluster-wide): no other test may
# use Kafka meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
