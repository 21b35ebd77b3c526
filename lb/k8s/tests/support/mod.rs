//! Support for the kube source tests: the fake API server.
pub mod fake_api;
