//! Kafka request decoder: one request frame (without its size) through the door's
//! decoding and, for a Produce, the record batch checks. The checks are in
//! `shardmq::door::kafka::check`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardmq::fuzzing::kafka_request_check(data));
