#![allow(dead_code, unused_imports)]
//! Shared helpers of the registry client's tests.

pub mod registry;

pub use test_support::{http, openssl, require_tool};
