//! The DLQ tool's reading and rendering of hostile entries (FUZZING.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use send_worker_fuzz::{Delivery, check_dlq_entry};

fuzz_target!(|d: Delivery| check_dlq_entry(&d));
