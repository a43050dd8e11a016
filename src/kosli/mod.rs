//! The Kosli HTTP client: reports, environments and asserts (see docs/kosli-api.md).

mod body;
mod client;
pub mod retry;
mod types;

pub use body::{RequestBody, Streamed};
pub use client::{
    ApiToken, EnsureOutcome, KosliClient, KosliConfig, RequestObserver, USER_AGENT, Unfenced,
    WriteFence, report_url,
};
pub use retry::RetryPolicy;
pub use types::{AssertOutcome, AssertResponse, Environment, FlowStatus, PolicyEvaluation};
