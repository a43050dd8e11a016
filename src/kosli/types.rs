//! What Kosli answers. Lenient on purpose: Kosli may add fields at any time.

use serde::{Deserialize, Serialize};

/// `GET /api/v2/environments/{org}/{env}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Environment {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub last_reported_at: Option<f64>,
    /// Compliance of what runs: true, false, or null (unknown).
    #[serde(default)]
    pub state: Option<bool>,
    #[serde(default)]
    pub html_url: Option<String>,
}

/// `PUT /api/v2/environments/{org}`: the request model rejects unknown fields.
#[derive(Debug, Serialize)]
pub(crate) struct CreateEnvironment<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub description: &'a str,
}

/// `GET /api/v2/asserts/{org}/fingerprint/{sha256}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AssertResponse {
    pub compliant: bool,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub policy_evaluations: Vec<PolicyEvaluation>,
    #[serde(default)]
    pub flows: Vec<FlowStatus>,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PolicyEvaluation {
    pub policy_name: String,
    /// `COMPLIANT` passes; anything else fails.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub rule_evaluations: Vec<RuleEvaluation>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RuleEvaluation {
    #[serde(default)]
    pub rule: Option<Rule>,
    #[serde(default)]
    pub satisfied: Option<bool>,
    #[serde(default)]
    pub ignored: Option<bool>,
    #[serde(default)]
    pub resolutions: Vec<Resolution>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Rule {
    #[serde(default)]
    pub definition: Option<RuleDefinition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RuleDefinition {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Resolution {
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct FlowStatus {
    #[serde(default)]
    pub flow: Option<String>,
    #[serde(default)]
    pub trail: Option<String>,
    #[serde(default)]
    pub compliance_status: Option<ComplianceStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ComplianceStatus {
    #[serde(default)]
    pub attestations_statuses: Vec<AttestationStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AttestationStatus {
    #[serde(default)]
    pub attestation_name: Option<String>,
    #[serde(default)]
    pub attestation_type: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub is_compliant: Option<bool>,
}

/// The verdict on one fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub enum AssertOutcome {
    Known(AssertResponse),
    /// 404: Kosli has never seen this fingerprint.
    Unknown,
}
