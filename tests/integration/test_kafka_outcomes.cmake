# it_kafka_outcomes delays every devkafka broker's answers: no other test may use Kafka
# meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
