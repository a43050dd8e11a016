//! The gate's decisions, pure: whether a request needs checking at all, and what
//! to answer once every image has its verdict.

use std::collections::BTreeSet;

use kube::core::admission::Operation;

use super::workload::Workload;
use super::{BREAK_GLASS_ANNOTATION, BREAK_GLASS_MAX};
use crate::core::crd::GateMode;
use crate::error::Error;
use crate::kosli::AssertResponse;

/// A KosliEnvironment whose gate covers the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The KosliEnvironment object (events go there).
    pub object: String,
    pub kosli_env: String,
    pub mode: GateMode,
    pub policies: Vec<String>,
}

/// Why a request is allowed without any lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    NotInspected,
    Operation,
    Subresource(String),
    ImagesUnchanged,
    ExemptNamespace,
    NoEnvironment,
    BreakGlass { until: jiff::Timestamp },
}

impl Skip {
    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::NotInspected => "not-inspected",
            Skip::Operation => "operation",
            Skip::Subresource(_) => "subresource",
            Skip::ImagesUnchanged => "images-unchanged",
            Skip::ExemptNamespace => "exempt",
            Skip::NoEnvironment => "no-environment",
            Skip::BreakGlass { .. } => "break-glass",
        }
    }
}

/// What to look up: the distinct images and the gating environments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub images: Vec<String>,
    pub targets: Vec<Target>,
}

/// A break-glass annotation and whether it holds now.
pub fn break_glass(
    workload: &Workload,
    now: jiff::Timestamp,
) -> Option<Result<jiff::Timestamp, Error>> {
    let value = workload.annotations.get(BREAK_GLASS_ANNOTATION)?;
    let ignored = |problem: String| Error::BreakGlass {
        problem,
        source: None,
    };
    let until: jiff::Timestamp = match value.parse() {
        Ok(t) => t,
        Err(e) => {
            return Some(Err(Error::BreakGlass {
                problem: format!("{BREAK_GLASS_ANNOTATION} {value:?} is not an RFC 3339 time"),
                source: Some(e),
            }));
        }
    };
    let max = jiff::SignedDuration::try_from(BREAK_GLASS_MAX).unwrap_or(jiff::SignedDuration::ZERO);
    Some(if until <= now {
        Err(ignored(format!(
            "{BREAK_GLASS_ANNOTATION} expired at {until}"
        )))
    } else if until.duration_since(now) > max {
        Err(ignored(format!(
            "{BREAK_GLASS_ANNOTATION} {until} is more than 24 h ahead; it is not honoured"
        )))
    } else {
        Ok(until)
    })
}

/// Decides whether the request needs lookups. `targets` are the environments
/// covering the workload's namespace and labels (mode Off ones are ignored).
pub fn plan(
    workload: &Workload,
    targets: Vec<Target>,
    exempt: bool,
    now: jiff::Timestamp,
) -> Result<Plan, Skip> {
    if !matches!(workload.operation, Operation::Create | Operation::Update) {
        return Err(Skip::Operation);
    }
    if let Some(sub) = &workload.sub_resource
        && sub != "ephemeralcontainers"
    {
        return Err(Skip::Subresource(sub.clone()));
    }
    let Some(template) = &workload.template else {
        return Err(Skip::NotInspected);
    };
    if exempt {
        return Err(Skip::ExemptNamespace);
    }
    let mut images: BTreeSet<&str> = template.images.iter().map(|c| c.image.as_str()).collect();
    if workload.operation == Operation::Update
        && let Some(old) = &workload.old_template
    {
        // Only images the update brings in need a verdict.
        let old_images: BTreeSet<&str> = old.images.iter().map(|c| c.image.as_str()).collect();
        images.retain(|i| !old_images.contains(i));
        if images.is_empty() {
            return Err(Skip::ImagesUnchanged);
        }
    }
    let targets: Vec<Target> = targets
        .into_iter()
        .filter(|t| t.mode != GateMode::Off)
        .collect();
    if targets.is_empty() {
        return Err(Skip::NoEnvironment);
    }
    if let Some(Ok(until)) = break_glass(workload, now) {
        return Err(Skip::BreakGlass { until });
    }
    Ok(Plan {
        images: images.into_iter().map(str::to_owned).collect(),
        targets,
    })
}

/// The verdict on one image for one environment.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageVerdict {
    Compliant {
        digest: String,
    },
    /// Kosli could not be asked; the last compliant verdict stands in.
    CompliantCached {
        digest: String,
        why: String,
    },
    NonCompliant {
        digest: String,
        reasons: Vec<String>,
        url: Option<String>,
    },
    /// 404: Kosli has never seen the fingerprint.
    Unknown {
        digest: String,
    },
    KosliUnreachable {
        digest: String,
        why: String,
    },
    Unresolvable {
        why: String,
    },
}

/// What the API server is told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    /// Each image/environment that failed, for logs and audit.
    pub failures: Vec<String>,
}

/// Human reasons from an assert answer: failing policies with their rules and
/// resolutions, and attestations that are missing or non-compliant.
pub fn reasons(assert: &AssertResponse) -> Vec<String> {
    let mut reasons = Vec::new();
    for policy in assert
        .policy_evaluations
        .iter()
        .filter(|p| p.status != "COMPLIANT")
    {
        let rules: Vec<String> = policy
            .rule_evaluations
            .iter()
            .filter(|r| r.satisfied == Some(false) && r.ignored != Some(true))
            .map(|r| {
                let name = r
                    .rule
                    .as_ref()
                    .and_then(|rule| rule.definition.as_ref())
                    .and_then(|d| d.name.clone().or(d.kind.clone()))
                    .unwrap_or_else(|| "a rule".to_owned());
                let kinds: Vec<&str> = r.resolutions.iter().map(|x| x.kind.as_str()).collect();
                if kinds.is_empty() {
                    name
                } else {
                    format!("{name} ({})", kinds.join(", "))
                }
            })
            .collect();
        reasons.push(if rules.is_empty() {
            format!("policy {} is {}", policy.policy_name, policy.status)
        } else {
            format!("policy {}: {}", policy.policy_name, rules.join("; "))
        });
    }
    for flow in &assert.flows {
        let statuses = flow
            .compliance_status
            .iter()
            .flat_map(|c| c.attestations_statuses.iter());
        for a in statuses.filter(|a| a.is_compliant == Some(false)) {
            let name = a
                .attestation_name
                .clone()
                .unwrap_or_else(|| "an attestation".to_owned());
            let status = a
                .status
                .clone()
                .unwrap_or_else(|| "non-compliant".to_owned());
            let trail = flow
                .trail
                .as_deref()
                .map(|t| format!(" in trail {t}"))
                .unwrap_or_default();
            reasons.push(format!("attestation {name} is {status}{trail}"));
        }
    }
    if reasons.is_empty() {
        reasons.push("Kosli judges it non-compliant".to_owned());
    }
    reasons
}

fn failure_line(image: &str, env: &str, verdict: &ImageVerdict) -> Option<String> {
    Some(match verdict {
        ImageVerdict::Compliant { .. } | ImageVerdict::CompliantCached { .. } => return None,
        ImageVerdict::NonCompliant {
            digest,
            reasons,
            url,
        } => {
            let link = url
                .as_deref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            format!(
                "{image} (sha256:{digest}) is not compliant for {env}: {}{link}",
                reasons.join("; ")
            )
        }
        ImageVerdict::Unknown { digest } => format!(
            "{image} (sha256:{digest}) is unknown to Kosli: no build of this fingerprint was reported"
        ),
        ImageVerdict::KosliUnreachable { digest, why } => format!(
            "{image} (sha256:{digest}) could not be checked for {env}: Kosli is unreachable ({why})"
        ),
        ImageVerdict::Unresolvable { why } => {
            format!("{image}: cannot resolve tag ({why}); pin a digest (image@sha256:...)")
        }
    })
}

/// Combines every verdict: Enforce denies on any failure, Warn admits with
/// warnings, Audit admits silently (the caller logs and counts).
pub fn answer(results: &[(Target, String, ImageVerdict)]) -> Answer {
    let mut answer = Answer {
        allowed: true,
        ..Answer::default()
    };
    let mut denials = Vec::new();
    for (target, image, verdict) in results {
        if let ImageVerdict::CompliantCached { digest, why } = verdict {
            answer.warnings.push(format!(
                "{image} (sha256:{digest}) allowed for {} on a cached compliant verdict: Kosli is unreachable ({why})",
                target.kosli_env
            ));
        }
        let Some(line) = failure_line(image, &target.kosli_env, verdict) else {
            continue;
        };
        answer.failures.push(line.clone());
        match target.mode {
            GateMode::Enforce => denials.push(line),
            GateMode::Warn => answer.warnings.push(line),
            GateMode::Audit | GateMode::Off => {}
        }
    }
    if !denials.is_empty() {
        answer.allowed = false;
        answer.message = Some(format!("denied by the Kosli gate: {}", denials.join(" | ")));
    }
    answer
}

#[cfg(test)]
mod tests;
