//! The fuzz harness of send-worker (see FUZZING.md at the repository root):
//! a generator of hostile deliveries ([`Delivery`]) and the properties the
//! decoder ([`check_decode`]) and the DLQ tool ([`check_dlq_entry`]) keep on
//! every one. The cargo-fuzz targets in `fuzz_targets/` and the stable smoke
//! test in `tests/smoke.rs` share them.

mod check;
mod delivery;

pub use check::{check_decode, check_dlq_entry};
pub use delivery::{Delivery, HEADER_NAMES, MAX_DEEP, MAX_DEPTH, value};
