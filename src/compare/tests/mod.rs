//! The harness's own tests (it is private to the `optc` binary).

mod grad;
mod harness;
mod rules;
mod tune;
