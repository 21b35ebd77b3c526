//! The edge LB config (lb.yaml): parsing, one test per validation rule, and the write → parse round trip.
mod common;
mod parse;
mod roundtrip;
mod rules;
