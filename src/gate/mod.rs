//! The control gate: a validating admission webhook that denies non-compliant
//! artifacts where an environment asks for it.
//!
//! `workload` reads what to check out of an AdmissionReview and `decision`
//! decides (both pure); `resolver` does the lookups (registry, Kosli) with caches,
//! shared in-flight requests and a circuit breaker; `handler` ties them together
//! behind the HTTPS server of `crate::gate::server`.

pub mod bounded_map;
pub mod decision;
pub mod handler;
pub mod in_flight;
pub mod pull_secrets;
pub mod registry;
pub mod resolver;
pub mod server;
pub mod workload;

/// The annotation that lets a workload through until the time it holds (RFC 3339).
pub const BREAK_GLASS_ANNOTATION: &str = "gate.kosli.com/break-glass-until";
/// The longest a break-glass may run: a far-future expiry is not honoured.
pub const BREAK_GLASS_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
