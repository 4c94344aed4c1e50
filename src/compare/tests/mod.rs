//! The harness's own tests (it is private to the `optc` binary).

mod grad;
mod harness;
mod int8;
mod rules;
mod tune;
