#![forbid(unsafe_code)]
pub mod temporal;
