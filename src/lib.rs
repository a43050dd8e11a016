//! kosli-operator: records what runs in a Kubernetes cluster to Kosli and gates
//! deploys on Kosli compliance.
//!
//! Pure decisions (`fingerprint`, `selection`, `snapshot`) are kept apart from
//! I/O at the edges (`kosli`, `cluster`, `cli`).

pub mod crd;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod gate;
pub mod http;
pub mod pod;
pub mod selection;
pub mod snapshot;
pub mod status;
pub mod store;

pub use error::{Error, Result};
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod kosli;
pub mod leader;
pub mod metrics;
pub mod podlist;
pub mod registry;
pub mod reporter;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod webhook;
