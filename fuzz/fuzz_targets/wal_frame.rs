//! WAL frame decoder: arbitrary frame runs and whole segments, scanned as recovery does.
//! The input layout and the checks are in `shardmq::storage::check`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardmq::fuzzing::wal_frame_check(data));
