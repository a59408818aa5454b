//! Test support for effp: ONNX graphs built in code and the fixtures made by
//! `tests/fixtures/make_fixtures.py`.

pub mod builder;
pub mod fixtures;
pub mod zoo;
