# it_kafka_consumer_lost takes devkafka brokers down: no other test may use Kafka meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
