//! Test support for effp: ONNX graphs built in code, the fixtures made by
//! `tests/fixtures/make_fixtures.py`, and the real servers tests start.

pub mod balancer;
pub mod builder;
pub mod fixtures;
pub mod servers;
pub mod zoo;
