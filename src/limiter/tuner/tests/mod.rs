//! The tuner on hand-made traffic, on a fake clock: the cases the
//! virtual-time matrix (`vsim.rs`, always-backlogged clients against the
//! simulator's models) does not produce.

mod headerless;
mod quiet;
