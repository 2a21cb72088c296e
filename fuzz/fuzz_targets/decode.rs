//! `Job::parse` on hostile deliveries, with the retry copy and the
//! dead-letter entry it leads to (FUZZING.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use send_worker_fuzz::{Delivery, check_decode};

fuzz_target!(|d: Delivery| check_decode(&d));
