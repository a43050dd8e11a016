//! The KosliEnvironment status the reporter writes: pure functions from what the
//! reporter observed to conditions, so transitions are tested without a cluster.
//!
//! Conditions: Reporting (the last report attempt), Degraded (reporting stopped
//! until something changes: invalid spec, rejected credentials, wrong environment
//! type, an older KosliEnvironment reporting the same Kosli environment), Stale (no report accepted for two heartbeats) and Ready (all well).
//! `lastTransitionTime` moves only when a condition's status changes. Messages are
//! never empty: some API servers read an empty string in a merge patch as null.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::error::Error;

/// The outcome of the last thing the reporter did for an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing attempted yet (waiting for the watches to sync, or a standby).
    Pending {
        message: String,
    },
    Reported,
    /// Dry run: the report was logged, not sent.
    DryRun,
    /// Kosli unreachable or failing; retried with backoff.
    Transient {
        message: String,
    },
    /// Kosli refused for a reason a retry cannot fix; waits for a change.
    Permanent {
        reason: &'static str,
        message: String,
    },
    InvalidSpec {
        message: String,
    },
    /// An older KosliEnvironment names the same Kosli environment and reports
    /// it; this one is not reported while that one exists.
    NotOwner {
        message: String,
    },
}

/// The reason of the conditions of a KosliEnvironment that is not reported
/// because an older one names the same Kosli environment.
pub const DUPLICATE_REASON: &str = "DuplicateKosliEnvironment";

impl Outcome {
    /// Classifies a failed report.
    pub fn from_error(error: &Error) -> Self {
        let message = error.to_string();
        if error.is_transient() {
            return Outcome::Transient { message };
        }
        let reason = match error {
            Error::KosliStatus { status: 401, .. } => "Unauthorized",
            Error::KosliStatus { status: 403, .. } => "Forbidden",
            Error::KosliStatus { status: 404, .. } => "EnvironmentNotFound",
            Error::KosliStatus {
                status: 400 | 422, ..
            } => "KosliRejectedReport",
            Error::EnvironmentType { found, .. } if found == "logical" => "LogicalEnvironment",
            Error::EnvironmentType { .. } => "EnvironmentTypeMismatch",
            Error::KosliTransport {
                certificate: true, ..
            } => "TLSCertificateInvalid",
            Error::Config(_) => "InvalidConfiguration",
            _ => "KosliError",
        };
        Outcome::Permanent { reason, message }
    }
}

/// The conditions the reporter keeps on a KosliEnvironment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Ready,
    Reporting,
    Degraded,
    Stale,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Reporting => "Reporting",
            ConditionType::Degraded => "Degraded",
            ConditionType::Stale => "Stale",
        }
    }
}

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

fn condition(
    type_: ConditionType,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The conditions an outcome calls for, with `now` as a provisional transition time.
pub fn desired_conditions(
    outcome: &Outcome,
    stale: Option<&str>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    use ConditionStatus::{False, True, Unknown};
    use ConditionType::{Degraded, Ready, Reporting, Stale};
    let c = |t, s, r: &str, m: &str| condition(t, s, r, m, generation, now);
    let (reporting_status, reporting_reason, reporting_message) = match outcome {
        Outcome::Pending { message } => (Unknown, "Pending", message.as_str()),
        Outcome::Reported => (True, "Reported", "Kosli accepted the last report"),
        Outcome::DryRun => (True, "DryRun", "dry run: reports are logged, not sent"),
        Outcome::Transient { message } => (False, "KosliUnavailable", message.as_str()),
        Outcome::Permanent { reason, message } => (False, *reason, message.as_str()),
        Outcome::InvalidSpec { message } => (False, "InvalidSpec", message.as_str()),
        Outcome::NotOwner { message } => (False, DUPLICATE_REASON, message.as_str()),
    };
    let reporting = c(
        Reporting,
        reporting_status,
        reporting_reason,
        reporting_message,
    );
    let degraded = match outcome {
        Outcome::Permanent { reason, message } => c(Degraded, True, reason, message),
        Outcome::InvalidSpec { message } => c(Degraded, True, "InvalidSpec", message),
        Outcome::NotOwner { message } => c(Degraded, True, DUPLICATE_REASON, message),
        _ => c(Degraded, False, "AsExpected", "nothing stops reporting"),
    };
    let stale_condition = match stale {
        Some(message) => c(Stale, True, "NoRecentReport", message),
        None => c(Stale, False, "Fresh", "no report is overdue"),
    };
    let ready = if reporting_status != True {
        c(Ready, False, reporting_reason, reporting_message)
    } else if let Some(message) = stale {
        c(Ready, False, "NoRecentReport", message)
    } else {
        c(Ready, True, reporting_reason, reporting_message)
    };
    vec![ready, reporting, degraded, stale_condition]
}

/// Keeps each condition's `lastTransitionTime` from `previous` unless its status changed.
pub fn merge_conditions(previous: &[Condition], desired: Vec<Condition>) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|p| p.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn get<'a>(cs: &'a [Condition], type_: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn messages_are_never_empty() {
        let now = t("2026-01-01T00:00:00Z");
        for outcome in [
            Outcome::Reported,
            Outcome::DryRun,
            Outcome::Transient {
                message: "m".into(),
            },
        ] {
            for stale in [None, Some("old")] {
                for c in desired_conditions(&outcome, stale, None, &now) {
                    assert!(!c.message.is_empty() && !c.reason.is_empty(), "{c:?}");
                }
            }
        }
    }

    #[test]
    fn reported_is_ready() {
        let cs = desired_conditions(
            &Outcome::Reported,
            None,
            Some(3),
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(get(&cs, "Ready").status, "True");
        assert_eq!(get(&cs, "Degraded").status, "False");
        assert!(cs.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn transient_failure_is_not_degraded() {
        let cs = desired_conditions(
            &Outcome::Transient {
                message: "HTTP 503".into(),
            },
            None,
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            (
                get(&cs, "Ready").status.as_str(),
                get(&cs, "Ready").reason.as_str()
            ),
            ("False", "KosliUnavailable")
        );
        assert_eq!(get(&cs, "Reporting").message, "HTTP 503");
        assert_eq!(get(&cs, "Degraded").status, "False");
    }

    #[test]
    fn permanent_and_invalid_spec_are_degraded() {
        let now = t("2026-01-01T00:00:00Z");
        let cs = desired_conditions(
            &Outcome::Permanent {
                reason: "Unauthorized",
                message: "HTTP 401".into(),
            },
            None,
            None,
            &now,
        );
        assert_eq!(
            (
                get(&cs, "Degraded").status.as_str(),
                get(&cs, "Degraded").reason.as_str()
            ),
            ("True", "Unauthorized")
        );
        let cs = desired_conditions(
            &Outcome::InvalidSpec {
                message: "spec.namespacesRegex: bad".into(),
            },
            None,
            None,
            &now,
        );
        assert_eq!(get(&cs, "Degraded").reason, "InvalidSpec");
        assert_eq!(get(&cs, "Ready").message, "spec.namespacesRegex: bad");
    }

    #[test]
    fn a_duplicate_is_degraded_naming_its_owner() {
        let message = "Kosli environment prod is reported by KosliEnvironment shop-a";
        let cs = desired_conditions(
            &Outcome::NotOwner {
                message: message.into(),
            },
            None,
            Some(1),
            &t("2026-01-01T00:00:00Z"),
        );
        for (type_, status) in [
            ("Degraded", "True"),
            ("Ready", "False"),
            ("Reporting", "False"),
        ] {
            let c = get(&cs, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
                (status, DUPLICATE_REASON, message),
                "{type_}"
            );
        }
    }

    #[test]
    fn stale_makes_ready_false() {
        let cs = desired_conditions(
            &Outcome::Reported,
            Some("no report for 700 s"),
            None,
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(get(&cs, "Stale").status, "True");
        assert_eq!(
            (
                get(&cs, "Ready").status.as_str(),
                get(&cs, "Ready").reason.as_str()
            ),
            ("False", "NoRecentReport")
        );
    }

    #[test]
    fn transition_time_moves_only_on_a_status_change() {
        let first = desired_conditions(&Outcome::Reported, None, None, &t("2026-01-01T00:00:00Z"));
        let again = merge_conditions(
            &first,
            desired_conditions(&Outcome::Reported, None, None, &t("2026-01-01T01:00:00Z")),
        );
        assert_eq!(
            again, first,
            "nothing changed: identical conditions, no status write"
        );
        let failing = merge_conditions(
            &again,
            desired_conditions(
                &Outcome::Transient {
                    message: "x".into(),
                },
                None,
                None,
                &t("2026-01-01T02:00:00Z"),
            ),
        );
        assert_eq!(
            get(&failing, "Ready").last_transition_time,
            t("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            get(&failing, "Degraded").last_transition_time,
            t("2026-01-01T00:00:00Z"),
            "Degraded stayed False"
        );
    }

    #[test]
    fn errors_classify_into_reasons() {
        let status = |s| Error::KosliStatus {
            method: "PUT",
            path: "/x".into(),
            status: s,
            message: "m".into(),
            retry_after: None,
        };
        assert!(matches!(
            Outcome::from_error(&status(503)),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            Outcome::from_error(&status(429)),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            Outcome::from_error(&status(401)),
            Outcome::Permanent {
                reason: "Unauthorized",
                ..
            }
        ));
        assert!(matches!(
            Outcome::from_error(&status(403)),
            Outcome::Permanent {
                reason: "Forbidden",
                ..
            }
        ));
        let logical = Error::EnvironmentType {
            name: "e".into(),
            found: "logical".into(),
        };
        assert!(matches!(
            Outcome::from_error(&logical),
            Outcome::Permanent {
                reason: "LogicalEnvironment",
                ..
            }
        ));
        let server = Error::EnvironmentType {
            name: "e".into(),
            found: "server".into(),
        };
        assert!(matches!(
            Outcome::from_error(&server),
            Outcome::Permanent {
                reason: "EnvironmentTypeMismatch",
                ..
            }
        ));
    }
}
