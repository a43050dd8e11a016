//! The gate's decisions, pure: whether a request needs checking at all, and what
//! to answer once every image has its verdict.

use std::collections::BTreeSet;

use kube::core::admission::Operation;

use super::workload::Workload;
use super::{BREAK_GLASS_ANNOTATION, BREAK_GLASS_MAX};
use crate::core::crd::{GateMode, UnknownArtifacts};
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
    pub unknown_artifacts: UnknownArtifacts,
    /// Tags are refused unresolved (`gate.requireDigest`).
    pub require_digest: bool,
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
    /// An honoured break-glass: admitted, and recorded with who used it.
    BreakGlass {
        until: jiff::Timestamp,
        user: String,
    },
    /// A break-glass by someone the install does not authorise: not a lookup
    /// but a refusal (denied in Enforce, a warning in Warn and Audit).
    BreakGlassNotAuthorised {
        reason: String,
    },
    /// An inspected kind whose pod template cannot be read: a refusal like
    /// the one above, never an admission unchecked.
    Unreadable {
        reason: String,
    },
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
            Skip::BreakGlassNotAuthorised { .. } => "break-glass-refused",
            Skip::Unreadable { .. } => "unreadable",
        }
    }
}

/// Who may use break-glass: users named, or members of groups named, by the
/// install. Empty sets authorise nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakGlassAuthority {
    pub users: BTreeSet<String>,
    pub groups: BTreeSet<String>,
}

/// What a workload's break-glass annotation amounts to for the requester.
#[derive(Debug)]
pub enum BreakGlass {
    /// No annotation.
    Absent,
    /// Valid, in force, and the requester may use it.
    Honoured { until: jiff::Timestamp },
    /// Valid and in force, but the requester may not use it.
    NotAuthorised { reason: String },
    /// Expired, too far ahead or unreadable: ignored, the workload is checked.
    Ignored(Error),
}

/// The break-glass of `workload` as requested by its `user`. Authority is
/// checked only for an annotation that would otherwise hold, so an expired or
/// malformed one keeps its own, more useful, reason.
pub fn break_glass_for(
    workload: &Workload,
    authority: &BreakGlassAuthority,
    now: jiff::Timestamp,
) -> BreakGlass {
    let until = match break_glass(workload, now) {
        None => return BreakGlass::Absent,
        Some(Err(e)) => return BreakGlass::Ignored(e),
        Some(Ok(until)) => until,
    };
    let user = &workload.user;
    if authority.users.contains(&user.username)
        || user.groups.iter().any(|g| authority.groups.contains(g))
    {
        return BreakGlass::Honoured { until };
    }
    let names = |set: &BTreeSet<String>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    BreakGlass::NotAuthorised {
        reason: format!(
            "{BREAK_GLASS_ANNOTATION} used by {:?} (groups: {}), who may not break glass; allowed users: {}; allowed groups: {}",
            user.username,
            names(&user.groups.iter().cloned().collect()),
            names(&authority.users),
            names(&authority.groups),
        ),
    }
}

/// The answer when the gate cannot decide (no answer in time, labels or a
/// spec it cannot read, a refused break-glass): Enforce denies with the
/// reason, Warn and Audit admit with it as a warning, so nothing is admitted
/// silently by accident.
pub fn undecided(mode: GateMode, reason: &str) -> Answer {
    let line = format!("the Kosli gate could not check this: {reason}");
    match mode {
        GateMode::Enforce => Answer {
            allowed: false,
            message: Some(format!("denied by the Kosli gate: {reason}")),
            warnings: Vec::new(),
            failures: vec![line],
            allowed_unknown: Vec::new(),
        },
        GateMode::Warn | GateMode::Audit | GateMode::Off => Answer {
            allowed: true,
            message: None,
            warnings: vec![line.clone()],
            failures: vec![line],
            allowed_unknown: Vec::new(),
        },
    }
}

/// The strictest gate mode among `modes` (`Off` when there are none).
pub fn strictest(modes: impl IntoIterator<Item = GateMode>) -> GateMode {
    // GateMode orders Off < Audit < Warn < Enforce.
    modes.into_iter().max().unwrap_or(GateMode::Off)
}

/// The metric and log label of a mode.
pub fn mode_label(mode: GateMode) -> &'static str {
    match mode {
        GateMode::Off => "none",
        GateMode::Audit => "Audit",
        GateMode::Warn => "Warn",
        GateMode::Enforce => "Enforce",
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
    authority: &BreakGlassAuthority,
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
    if exempt && (workload.template.is_some() || workload.unreadable.is_some()) {
        return Err(Skip::ExemptNamespace);
    }
    if let Some(problem) = &workload.unreadable {
        return if targets.iter().any(|t| t.mode != GateMode::Off) {
            Err(Skip::Unreadable {
                reason: format!("the {} cannot be read: {problem}", workload.kind),
            })
        } else {
            Err(Skip::NoEnvironment)
        };
    }
    let Some(template) = &workload.template else {
        return Err(Skip::NotInspected);
    };
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
    match break_glass_for(workload, authority, now) {
        BreakGlass::Honoured { until } => {
            return Err(Skip::BreakGlass {
                until,
                user: workload.user.username.clone(),
            });
        }
        BreakGlass::NotAuthorised { reason } => {
            return Err(Skip::BreakGlassNotAuthorised { reason });
        }
        BreakGlass::Absent | BreakGlass::Ignored(_) => {}
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
    /// A tag without a digest where the install requires digests: what the
    /// kubelet pulls could differ from what was checked.
    NotPinned,
}

/// The verdict on an image before any lookup, when digests are required: a
/// reference without one is refused as it is.
pub fn require_digest(image: &str) -> Option<ImageVerdict> {
    crate::core::fingerprint::ImageRef::parse(image)
        .is_ok_and(|r| r.digest.is_none())
        .then_some(ImageVerdict::NotPinned)
}

/// What the API server is told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    /// Each image/environment that failed, for logs and audit.
    pub failures: Vec<String>,
    /// Images Kosli has never seen, admitted because their environment
    /// allows unknown artifacts: not failures, but logged.
    pub allowed_unknown: Vec<String>,
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
        ImageVerdict::NotPinned => format!(
            "{image}: {env} requires digests: pin the image by digest (image@sha256:...), a tag can move between this check and the pull"
        ),
    })
}

/// Combines every verdict: Enforce denies on any failure, Warn admits with
/// warnings, Audit admits silently (the caller logs and counts). An unknown
/// image follows its environment's `unknownArtifacts`: Deny as any failure,
/// Warn a warning in Enforce too, Allow admitted and only logged.
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
        // An unknown image is a failure unless the environment says otherwise.
        let unknown_as = match verdict {
            ImageVerdict::Unknown { .. } => target.unknown_artifacts,
            _ => UnknownArtifacts::Deny,
        };
        if unknown_as == UnknownArtifacts::Allow {
            answer.allowed_unknown.push(line);
            continue;
        }
        answer.failures.push(line.clone());
        match (target.mode, unknown_as) {
            (GateMode::Enforce, UnknownArtifacts::Deny) => denials.push(line),
            (GateMode::Enforce | GateMode::Warn, _) => answer.warnings.push(line),
            (GateMode::Audit | GateMode::Off, _) => {}
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
