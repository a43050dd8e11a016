//! kosli-operator: records what runs in a Kubernetes cluster to Kosli and gates
//! deploys on Kosli compliance.
//!
//! The modules, lowest layer first; each uses only those above it in this list
//! (`docs/architecture.md` draws the data paths through them):
//!
//! - [`error`], [`tls`], [`http_body`]: the one error type, process-wide TLS
//!   set-up and capped reads of HTTP answers.
//! - [`core`]: pure decisions and data: fingerprints and image references, the
//!   compact pod record, namespace and pod selection, the snapshot engine and
//!   the KosliEnvironment resource. No I/O, no async.
//! - [`kosli`]: the Kosli HTTP client, its retries and wire types.
//! - [`observe`]: metrics, the health and metrics endpoints, logging.
//! - [`k8s`]: the Kubernetes edge: client, watches, the cluster store, Events,
//!   leader election, reading pods from a file.
//! - [`environments`]: the index of KosliEnvironments (compiled selections,
//!   Kosli names, gate specs) that the reporter and the gate both read.
//! - [`reporter`]: one worker per environment; its decisions are a pure state
//!   machine ([`reporter::machine`]), the worker performs what it returns.
//! - [`gate`]: the admission webhook: workload parsing and verdicts (pure), the
//!   resolver, the registry client and the HTTPS server.
//! - [`cli`], [`commands`]: flags and config files, and what each subcommand does.

// Panics are for tests: library code returns errors (unwrap_used is set for
// every target in Cargo.toml; integration-test helpers may still expect).
#![warn(clippy::expect_used, clippy::panic)]

pub mod error;
pub mod http_body;
pub mod tls;

pub mod core;
pub mod kosli;
pub mod observe;

pub mod k8s;

pub mod environments;

pub mod gate;
pub mod reporter;

pub mod cli;
pub mod commands;

pub use error::{Error, Result};
