//! What an operator of the operator sees: Prometheus metrics, the `/metrics`,
//! `/livez` and `/readyz` endpoints, and logging.

pub mod health;
pub mod logging;
pub mod metrics;
