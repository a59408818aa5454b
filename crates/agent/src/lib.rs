//! effp-agent, the device benchmark agent: it claims benchmark tasks of its device
//! kind from an effp server, downloads the original and pruned models, times both
//! with the same settings (TensorRT's trtexec, or a built-in CPU runtime) and reports
//! the latencies, renewing the task's lease meanwhile.
//!
//! The wire types are `effp_protocol::benchmark`'s; this crate adds the HTTP client
//! ([`client`]), the device facts ([`facts`]), the runners ([`runner`]) and the loop
//! ([`agent`]).

#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod child;
pub mod client;
pub mod facts;
pub mod flag;
pub mod lease;
pub mod runner;
pub mod settings;
pub mod task;
