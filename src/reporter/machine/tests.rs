//! Every rule of the reporter, driven by a made-up clock: milliseconds of real
//! time for minutes of reporter time.

use std::time::{Duration, Instant};

use super::*;
use crate::core::crd::KosliEnvironmentSpec;

const DEBOUNCE: Duration = Duration::from_secs(1);
const MAX_DEBOUNCE: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(300);
const HOLD: Duration = Duration::from_secs(600);
const PERMANENT_RETRY: Duration = Duration::from_secs(5);

/// A machine and a clock that tests move by hand.
struct Harness {
    machine: Machine,
    start: Instant,
    wall: jiff::Timestamp,
    elapsed: Duration,
}

fn spec() -> Spec {
    Spec {
        kosli_env: "prod".to_owned(),
        generation: Some(1),
        heartbeat: HEARTBEAT,
        auto_create: false,
        invalid: None,
        ownership: Ownership::Owner,
    }
}

fn timing() -> Timing {
    Timing {
        debounce: DEBOUNCE,
        max_debounce: MAX_DEBOUNCE,
        retry: RetryPolicy {
            max_retries: u32::MAX,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(120),
            max_retry_after: Duration::from_secs(300),
        },
        permanent_hold: HOLD,
        permanent_retry: PERMANENT_RETRY,
        dry_run: false,
    }
}

fn summary(hash: &str) -> Summary {
    Summary {
        pods: 3,
        artifacts: 2,
        config_ids: 0,
        hash: hash.to_owned(),
    }
}

fn transient(message: &str, retry_after: Option<Duration>) -> Failure {
    Failure {
        outcome: Outcome::Transient {
            message: message.to_owned(),
        },
        status: Some(503),
        message: message.to_owned(),
        retry_after,
    }
}

fn permanent(reason: &'static str, status: u16) -> Failure {
    Failure {
        outcome: Outcome::Permanent {
            reason,
            message: format!("HTTP {status}"),
        },
        status: Some(status),
        message: format!("HTTP {status}"),
        retry_after: None,
    }
}

fn send() -> Effect {
    Effect::Send {
        ensure_environment: false,
    }
}

fn events(effects: &[Effect]) -> Vec<(EventType, &'static str)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event { type_, reason, .. } => Some((*type_, *reason)),
            _ => None,
        })
        .collect()
}

impl Harness {
    fn new() -> Self {
        Self::with(timing(), spec())
    }

    fn with(timing: Timing, spec: Spec) -> Self {
        Self {
            machine: Machine::new(timing, spec, true).with_seed(7),
            start: Instant::now(),
            wall: "2026-01-01T00:00:00Z".parse().unwrap(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Moment {
        Moment {
            at: self.start + self.elapsed,
            wall: self.wall + self.elapsed,
        }
    }

    fn at(&self) -> Instant {
        self.start + self.elapsed
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    /// Moves the clock to the machine's next wake and ticks.
    fn tick_at_wake(&mut self) -> Vec<Effect> {
        let wake = self.machine.next_wake().expect("a wake time");
        assert!(wake >= self.at(), "a wake time never lies in the past");
        self.elapsed = wake - self.start;
        self.step(Input::Tick)
    }

    fn step(&mut self, input: Input) -> Vec<Effect> {
        let now = self.now();
        self.machine.step(input, now)
    }

    /// A change that came in just now.
    fn changed(&mut self) -> Vec<Effect> {
        let since = self.at();
        self.step(Input::Changed { since })
    }

    /// After a first report, the next is attempted, built and sent; the send
    /// takes 4 s, and a change comes in 500 ms into it, untold until the send
    /// ends. Returns when that change came in.
    fn send_while_a_change_comes_in(&mut self) -> Instant {
        self.first_report("a");
        self.advance(DEBOUNCE);
        self.changed();
        assert_eq!(self.tick_at_wake(), vec![Effect::Build]);
        assert_eq!(self.step(Input::Built(Some(summary("b")))), vec![send()]);
        let came_in = self.at() + Duration::from_millis(500);
        self.advance(Duration::from_secs(4));
        self.sent(Ok(()));
        self.step(Input::Compliance(None));
        came_in
    }

    /// A change, the debounce, and a build of `hash`: what the build leads to.
    fn change_and_build(&mut self, hash: &str) -> Vec<Effect> {
        self.changed();
        self.wake_and_build(hash)
    }

    /// The next wake time comes and asks for a build of `hash`: what it leads to.
    fn wake_and_build(&mut self, hash: &str) -> Vec<Effect> {
        assert_eq!(self.tick_at_wake(), vec![Effect::Build]);
        self.step(Input::Built(Some(summary(hash))))
    }

    /// Kosli's answer to a send.
    fn sent(&mut self, result: Result<(), Failure>) -> Vec<Effect> {
        self.step(Input::Sent {
            ensured: false,
            result,
        })
    }

    /// A full successful report of `hash`, from a Build onwards.
    fn report(&mut self, hash: &str) {
        assert_eq!(self.step(Input::Built(Some(summary(hash)))), vec![send()]);
        let effects = self.sent(Ok(()));
        assert!(effects.contains(&Effect::RefreshCompliance), "{effects:?}");
        self.step(Input::Compliance(None));
    }

    /// The first report after start: a change, the debounce, a report.
    fn first_report(&mut self, hash: &str) {
        self.changed();
        assert_eq!(self.tick_at_wake(), vec![Effect::Build]);
        self.report(hash);
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let env = KosliEnvironment::new("prod", KosliEnvironmentSpec::default());
        let status = self.machine.status(&env, self.now());
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }
}

#[test]
fn a_change_after_a_quiet_period_is_reported_at_once() {
    let mut h = Harness::new();
    assert_eq!(h.machine.next_wake(), None, "nothing to do until an input");
    assert!(h.changed().is_empty());
    assert_eq!(h.machine.next_wake(), Some(h.at()), "the leading edge");
    assert_eq!(h.step(Input::Tick), vec![Effect::Build]);
    h.report("a");
    // Quiet for longer than the debounce: the next change goes at once too.
    h.advance(DEBOUNCE);
    h.changed();
    assert_eq!(h.machine.next_wake(), Some(h.at()));
    assert_eq!(h.step(Input::Tick), vec![Effect::Build]);
    assert_eq!(
        h.machine.next_wake().map(|w| w > h.at()),
        Some(true),
        "the change is taken"
    );
}

#[test]
fn changes_right_after_a_report_wait_for_the_debounce() {
    let mut h = Harness::new();
    h.first_report("a");
    h.advance(Duration::from_millis(300));
    assert!(h.changed().is_empty());
    assert_eq!(
        h.machine.next_wake(),
        Some(h.at() + DEBOUNCE),
        "within the debounce of the last attempt: batched"
    );
    h.advance(Duration::from_millis(400));
    assert!(
        h.step(Input::Tick).is_empty(),
        "too early: still quiet time"
    );
    h.advance(Duration::from_millis(600));
    assert_eq!(h.step(Input::Tick), vec![Effect::Build]);
}

#[test]
fn each_change_of_a_burst_restarts_the_quiet_time() {
    let mut h = Harness::new();
    h.first_report("a");
    h.changed();
    h.advance(Duration::from_millis(800));
    h.changed();
    assert_eq!(h.machine.next_wake(), Some(h.at() + DEBOUNCE));
}

#[test]
fn a_burst_is_reported_at_its_start_and_then_by_max_debounce() {
    let mut h = Harness::new();
    // The burst's first change goes at once.
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    h.report("a");
    let first = h.at();
    // A change every 400 ms for 9.6 s: the quiet time never comes.
    for _ in 0..24 {
        h.changed();
        h.advance(Duration::from_millis(400));
    }
    assert_eq!(h.machine.next_wake(), Some(first + MAX_DEBOUNCE));
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
}

#[test]
fn changes_that_came_in_during_a_send_are_due_by_when_they_came() {
    let mut h = Harness::new();
    let came_in = h.send_while_a_change_comes_in();
    // Told only now, with changes still coming: the batch is due
    // `max_debounce` after the change came in, not after it was told.
    h.step(Input::Changed { since: came_in });
    h.advance(Duration::from_millis(200));
    h.changed();
    assert_eq!(
        h.machine.next_wake(),
        Some((h.at() + DEBOUNCE).min(came_in + MAX_DEBOUNCE))
    );
    let mut h = Harness::with(
        Timing {
            max_debounce: Duration::from_secs(2),
            ..timing()
        },
        spec(),
    );
    let came_in = h.send_while_a_change_comes_in();
    h.step(Input::Changed { since: came_in });
    assert_eq!(
        h.machine.next_wake(),
        Some(came_in + Duration::from_secs(2)),
        "a send longer than max_debounce: the next one is due already"
    );
    assert_eq!(h.step(Input::Tick), vec![Effect::Build]);
    assert_eq!(
        h.machine.unreported_since(),
        Some(came_in),
        "the change-to-report latency counts from when it came in"
    );
}

#[test]
fn a_change_told_after_an_attempt_that_saw_it_counts_from_that_attempt() {
    let mut h = Harness::new();
    h.first_report("a");
    // A change comes in; before the worker is told of it, an attempt for an
    // earlier change builds a view that already holds it.
    h.advance(DEBOUNCE);
    let came_in = h.at();
    h.advance(Duration::from_millis(100));
    h.changed();
    let attempted = h.at();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    h.report("b");
    h.advance(Duration::from_millis(300));
    h.step(Input::Changed { since: came_in });
    assert_eq!(
        h.machine.next_wake(),
        Some(h.at() + DEBOUNCE),
        "within the debounce of that attempt: batched, not a leading edge"
    );
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(
        h.machine.unreported_since(),
        Some(attempted),
        "not from before the report that carried it"
    );
}

#[test]
fn an_unchanged_snapshot_is_not_sent_until_the_heartbeat() {
    let mut h = Harness::new();
    h.first_report("a");
    let sent_at = h.at();
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![Effect::WriteStatus],
        "same hash: nothing to send"
    );
    assert_eq!(h.machine.next_wake(), Some(sent_at + HEARTBEAT));
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![send()],
        "the heartbeat resends the unchanged snapshot"
    );
}

#[test]
fn a_changed_snapshot_is_sent() {
    let mut h = Harness::new();
    h.first_report("a");
    assert_eq!(h.change_and_build("b"), vec![send()]);
}

#[test]
fn nothing_is_sent_from_an_incomplete_view() {
    let mut h = Harness::new();
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert!(h.step(Input::Built(None)).is_empty());
    assert_eq!(h.machine.next_wake(), None, "waits for the list to finish");
}

#[test]
fn a_transient_failure_backs_off_exponentially() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let failed_at = h.at();
        h.sent(Err(transient("HTTP 503", None)));
        let wake = h.machine.next_wake().unwrap();
        delays.push(wake - failed_at);
        assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
        assert_eq!(h.step(Input::Built(Some(summary("a")))), vec![send()]);
    }
    // base 2 s doubling: each delay lies in [d/2, d).
    for (delay, d) in delays.iter().zip([2u64, 4, 8, 16]) {
        let d = Duration::from_secs(d);
        assert!(*delay >= d / 2 && *delay < d, "{delays:?}");
    }
}

#[test]
fn a_change_during_backoff_does_not_send_early() {
    let mut h = Harness::new();
    h.change_and_build("a");
    h.sent(Err(transient("HTTP 503", None)));
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("b")))),
        vec![Effect::WriteStatus],
        "the retry is not due yet"
    );
    let effects = h.tick_at_wake();
    assert_eq!(effects, vec![Effect::Build], "the retry time came");
}

#[test]
fn retry_after_is_honoured_when_longer_than_the_backoff() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let failed_at = h.at();
    h.sent(Err(transient("HTTP 429", Some(Duration::from_secs(45)))));
    assert_eq!(
        h.machine.next_wake(),
        Some(failed_at + Duration::from_secs(45))
    );
}

#[test]
fn a_retry_after_beyond_the_cap_falls_back_to_the_backoff() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let failed_at = h.at();
    h.sent(Err(transient("HTTP 429", Some(Duration::from_secs(3600)))));
    let wait = h.machine.next_wake().unwrap() - failed_at;
    assert!(wait < Duration::from_secs(2), "{wait:?}");
}

#[test]
fn a_permanent_failure_holds_until_the_hold_ends() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let failed_at = h.at();
    let effects = h.sent(Err(permanent("Unauthorized", 401)));
    assert_eq!(events(&effects), vec![(EventType::Warning, "Unauthorized")]);
    assert_eq!(
        h.condition("Degraded"),
        ("True".into(), "Unauthorized".into())
    );
    // With nothing changed, the same request is not tried again before the hold ends.
    assert_eq!(h.machine.next_wake(), Some(failed_at + HOLD));
    assert_eq!(h.tick_at_wake(), vec![Effect::Build], "the hold ended");
}

#[test]
fn a_pod_change_after_a_permanent_failure_tries_again_within_seconds() {
    // Was: pod changes were ignored for the whole 600 s hold.
    let mut h = Harness::new();
    h.change_and_build("a");
    let failed_at = h.at();
    h.sent(Err(permanent("KosliRejectedReport", 400)));
    h.advance(Duration::from_secs(1));
    h.changed();
    assert_eq!(
        h.machine.next_wake(),
        Some(failed_at + PERMANENT_RETRY),
        "not before the hold's first backoff"
    );
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(h.step(Input::Built(Some(summary("b")))), vec![send()]);
    // A change long after the backoff is tried at once (a quiet period's
    // leading edge).
    h.sent(Err(permanent("KosliRejectedReport", 400)));
    h.advance(Duration::from_secs(60));
    h.changed();
    assert_eq!(h.machine.next_wake(), Some(h.at()));
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
}

#[test]
fn repeated_rejections_back_off_exponentially_up_to_the_hold() {
    // A spec Kosli keeps rejecting, with pods changing all the time: attempts
    // spread out, doubling from 5 s, never more often, capped at the hold.
    let mut h = Harness::new();
    h.change_and_build("a");
    let mut waits = Vec::new();
    for _ in 0..10 {
        let failed_at = h.at();
        h.sent(Err(permanent("KosliRejectedReport", 400)));
        // Pod churn: a change right away and every second after.
        h.changed();
        loop {
            let wake = h.machine.next_wake().unwrap();
            if wake <= h.at() + Duration::from_secs(1) {
                break;
            }
            h.advance(Duration::from_secs(1));
            h.changed();
        }
        assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
        waits.push((h.at() - failed_at).as_secs());
        assert_eq!(h.step(Input::Built(Some(summary("a")))), vec![send()]);
    }
    assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    // A success resets the backoff.
    h.sent(Ok(()));
    h.step(Input::Compliance(None));
    h.change_and_build("b");
    let failed_at = h.at();
    h.sent(Err(permanent("KosliRejectedReport", 400)));
    h.changed();
    assert_eq!(h.machine.next_wake(), Some(failed_at + PERMANENT_RETRY));
}

#[test]
fn a_new_token_ends_a_permanent_hold_at_once() {
    let mut h = Harness::new();
    h.change_and_build("a");
    h.sent(Err(permanent("Unauthorized", 401)));
    h.advance(Duration::from_millis(300));
    assert_eq!(h.step(Input::CredentialsChanged), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![send()],
        "Kosli never accepted it: the same snapshot is sent"
    );
    let effects = h.sent(Ok(()));
    assert_eq!(
        events(&effects),
        vec![(EventType::Normal, "ReportRecovered")]
    );
    assert_eq!(
        h.condition("Degraded"),
        ("False".into(), "AsExpected".into())
    );
}

#[test]
fn a_new_token_changes_nothing_else() {
    let mut h = Harness::new();
    h.first_report("a");
    assert!(
        h.step(Input::CredentialsChanged).is_empty(),
        "nothing held: nothing to retry"
    );
    h.change_and_build("b");
    h.sent(Err(transient("HTTP 503", None)));
    assert!(
        h.step(Input::CredentialsChanged).is_empty(),
        "a transient failure keeps its backoff"
    );
    let invalid = Spec {
        generation: Some(2),
        invalid: Some(InvalidSpec {
            message: "spec.namespacesRegex: bad".to_owned(),
        }),
        ..spec()
    };
    h.step(Input::Spec(invalid));
    assert!(
        h.step(Input::CredentialsChanged).is_empty(),
        "no token fixes an invalid spec"
    );
}

fn owned_by(owner: &str) -> Spec {
    Spec {
        ownership: Ownership::OwnedBy(owner.to_owned()),
        ..spec()
    }
}

#[test]
fn a_shadowed_environment_is_degraded_naming_its_owner_and_never_built() {
    let mut h = Harness::with(timing(), owned_by("shop-a"));
    h.changed();
    let effects = h.tick_at_wake();
    let message = "Kosli environment prod is reported by KosliEnvironment shop-a, the oldest naming it; \
                   this one is not reported while shop-a exists";
    assert_eq!(
        effects,
        vec![
            Effect::Event {
                type_: EventType::Warning,
                reason: "DuplicateKosliEnvironment",
                message: message.to_owned(),
            },
            Effect::WriteStatus
        ]
    );
    assert_eq!(
        h.condition("Degraded"),
        ("True".into(), "DuplicateKosliEnvironment".into())
    );
    assert_eq!(h.condition("Ready").0, "False");
    // Later changes: no Build, no second Event, no timers.
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::WriteStatus]);
    assert_eq!(h.machine.next_wake(), None);
    assert_eq!(h.step(Input::Leadership(true)), vec![Effect::WriteStatus]);
}

#[test]
fn an_environment_that_becomes_the_owner_reports_at_once() {
    let mut h = Harness::with(timing(), owned_by("shop-a"));
    h.changed();
    h.tick_at_wake();
    h.advance(Duration::from_secs(30));
    let effects = h.step(Input::Spec(spec()));
    assert_eq!(
        events(&effects),
        vec![(EventType::Normal, "KosliEnvironmentTakenOver")]
    );
    assert_eq!(effects.last(), Some(&Effect::Build), "{effects:?}");
    assert_eq!(h.step(Input::Built(Some(summary("a")))), vec![send()]);
    let effects = h.sent(Ok(()));
    assert!(
        events(&effects).is_empty(),
        "taking over is no recovery: {effects:?}"
    );
    assert_eq!(
        h.condition("Degraded"),
        ("False".into(), "AsExpected".into())
    );
}

#[test]
fn losing_ownership_stops_heartbeats_and_regaining_it_reports_afresh() {
    let mut h = Harness::new();
    h.first_report("a");
    assert!(h.machine.next_wake().is_some(), "a heartbeat is due later");
    let effects = h.step(Input::Spec(owned_by("older")));
    assert_eq!(
        events(&effects),
        vec![(EventType::Warning, "DuplicateKosliEnvironment")]
    );
    assert_eq!(
        h.machine.next_wake(),
        None,
        "no heartbeat for a shadowed environment"
    );
    h.step(Input::Spec(spec()));
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![send()],
        "the owner reported meanwhile: the same hash is sent again"
    );
}

#[test]
fn nothing_is_done_while_ownership_is_unsettled() {
    let unsettled = Spec {
        ownership: Ownership::Unsettled,
        ..spec()
    };
    let mut h = Harness::with(timing(), unsettled);
    h.changed();
    assert!(h.tick_at_wake().is_empty());
    assert_eq!(h.machine.next_wake(), None);
    assert_eq!(h.step(Input::Spec(spec())), vec![Effect::Build]);
}

#[test]
fn a_spec_change_releases_the_hold_at_once() {
    let mut h = Harness::new();
    h.change_and_build("a");
    h.sent(Err(permanent("KosliRejectedReport", 400)));
    h.advance(Duration::from_secs(5));
    let changed = Spec {
        generation: Some(2),
        ..spec()
    };
    assert_eq!(h.step(Input::Spec(changed)), vec![Effect::Build]);
}

#[test]
fn an_invalid_spec_is_degraded_and_recorded_once_per_message() {
    let invalid = |message: &str| Spec {
        invalid: Some(InvalidSpec {
            message: message.to_owned(),
        }),
        ..spec()
    };
    let mut h = Harness::with(timing(), invalid("spec.namespacesRegex: bad"));
    h.changed();
    let effects = h.tick_at_wake();
    assert_eq!(
        effects,
        vec![
            Effect::Event {
                type_: EventType::Warning,
                reason: "InvalidSpec",
                message: "spec.namespacesRegex: bad".to_owned(),
            },
            Effect::WriteStatus
        ]
    );
    assert_eq!(
        h.condition("Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    // The hold ends: the same message again is not a second Event.
    assert_eq!(h.tick_at_wake(), vec![Effect::WriteStatus]);
    // A new generation with another mistake is.
    let effects = h.step(Input::Spec(Spec {
        generation: Some(2),
        ..invalid("spec.name: too long")
    }));
    assert_eq!(events(&effects), vec![(EventType::Warning, "InvalidSpec")]);
    // Fixed: reporting resumes.
    let effects = h.step(Input::Spec(Spec {
        generation: Some(3),
        ..spec()
    }));
    assert_eq!(effects, vec![Effect::Build]);
}

#[test]
fn report_failed_is_recorded_once_and_recovery_once() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let first = h.sent(Err(transient("HTTP 503", None)));
    assert_eq!(events(&first), vec![(EventType::Warning, "ReportFailed")]);
    h.wake_and_build("a");
    let again = h.sent(Err(transient("HTTP 502", None)));
    assert!(events(&again).is_empty(), "still failing: no new Event");
    assert_eq!(
        h.condition("Ready"),
        ("False".into(), "KosliUnavailable".into())
    );
    h.wake_and_build("a");
    let recovered = h.sent(Ok(()));
    assert_eq!(
        events(&recovered),
        vec![(EventType::Normal, "ReportRecovered")]
    );
    h.step(Input::Compliance(None));
    assert_eq!(h.condition("Ready"), ("True".into(), "Reported".into()));
    // A later success is no recovery.
    h.change_and_build("b");
    let ok = h.sent(Ok(()));
    assert!(events(&ok).is_empty());
}

#[test]
fn the_first_report_records_no_recovery() {
    let mut h = Harness::new();
    h.change_and_build("a");
    let effects = h.sent(Ok(()));
    assert_eq!(effects, vec![Effect::RefreshCompliance]);
}

#[test]
fn non_compliance_is_recorded_when_it_starts() {
    let mut h = Harness::new();
    h.first_report("a");
    let url = "https://kosli.example/org/environments/prod".to_owned();
    let first = h.step(Input::Compliance(Some((
        Compliance::NonCompliant,
        url.clone(),
    ))));
    assert_eq!(
        first,
        vec![
            Effect::Event {
                type_: EventType::Warning,
                reason: "NonCompliant",
                message: format!("Kosli judges what runs in prod non-compliant: {url}"),
            },
            Effect::WriteStatus
        ]
    );
    let again = h.step(Input::Compliance(Some((
        Compliance::NonCompliant,
        url.clone(),
    ))));
    assert_eq!(
        again,
        vec![Effect::WriteStatus],
        "still non-compliant: no new Event"
    );
    h.step(Input::Compliance(Some((
        Compliance::Compliant,
        url.clone(),
    ))));
    let back = h.step(Input::Compliance(Some((Compliance::NonCompliant, url))));
    assert_eq!(events(&back), vec![(EventType::Warning, "NonCompliant")]);
}

#[test]
fn no_report_for_two_heartbeats_is_stale() {
    let mut h = Harness::new();
    h.first_report("a");
    let sent_at = h.at();
    assert_eq!(h.condition("Stale"), ("False".into(), "Fresh".into()));
    // The heartbeat fails, and keeps failing with long Retry-Afters.
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    h.step(Input::Built(Some(summary("a"))));
    h.sent(Err(transient("HTTP 429", Some(Duration::from_secs(299)))));
    h.wake_and_build("a");
    h.sent(Err(transient("HTTP 429", Some(Duration::from_secs(299)))));
    assert_eq!(
        h.machine.next_wake(),
        Some(sent_at + 2 * HEARTBEAT + Duration::from_secs(1)),
        "the stale check comes before the next retry"
    );
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![Effect::WriteStatus]
    );
    assert_eq!(
        h.condition("Stale"),
        ("True".into(), "NoRecentReport".into())
    );
    assert_eq!(
        h.condition("Ready"),
        ("False".into(), "KosliUnavailable".into())
    );
}

#[test]
fn a_standby_does_nothing_and_a_new_leader_reports_afresh() {
    let mut h = Harness::with(timing(), spec());
    h.first_report("a");
    assert!(h.step(Input::Leadership(false)).is_empty());
    assert!(h.changed().is_empty());
    assert_eq!(h.machine.next_wake(), None, "a standby has no timers");
    assert!(h.step(Input::Tick).is_empty());
    assert_eq!(h.step(Input::Leadership(true)), vec![Effect::Build]);
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![send()],
        "another leader may have reported meanwhile: the same hash is sent again"
    );
}

#[test]
fn auto_create_ensures_the_environment_until_it_is_known() {
    let mut h = Harness::with(
        timing(),
        Spec {
            auto_create: true,
            ..spec()
        },
    );
    h.changed();
    h.tick_at_wake();
    assert_eq!(
        h.step(Input::Built(Some(summary("a")))),
        vec![Effect::Send {
            ensure_environment: true
        }]
    );
    h.step(Input::Sent {
        ensured: true,
        result: Ok(()),
    });
    h.step(Input::Compliance(None));
    assert_eq!(h.change_and_build("b"), vec![send()]);
}

#[test]
fn dry_run_reports_without_asking_for_compliance() {
    let mut h = Harness::with(
        Timing {
            dry_run: true,
            ..timing()
        },
        spec(),
    );
    h.change_and_build("a");
    let effects = h.sent(Ok(()));
    assert_eq!(effects, vec![Effect::WriteStatus]);
    assert_eq!(h.condition("Ready"), ("True".into(), "DryRun".into()));
}

#[test]
fn status_is_written_only_when_it_changes() {
    let mut h = Harness::new();
    h.first_report("a");
    let env = KosliEnvironment::new("prod", KosliEnvironmentSpec::default());
    let status = h
        .machine
        .status_to_write(&env, h.now())
        .expect("first write");
    assert_eq!(status.snapshot_hash.as_deref(), Some("a"));
    assert_eq!(status.pod_count, Some(3));
    h.machine.status_written(status);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.machine.status_to_write(&env, h.now()), None);
}

#[test]
fn every_due_time_is_spent_once() {
    // However the inputs fall, the machine never asks to wake in the past
    // after it acted at that time, so the worker cannot spin.
    let mut h = Harness::new();
    h.first_report("a");
    for round in 0..50 {
        let effects = h.tick_at_wake();
        if effects == vec![Effect::Build] {
            let result = if round % 3 == 0 {
                Ok(())
            } else {
                Err(transient("HTTP 503", None))
            };
            if h.step(Input::Built(Some(summary("a")))) == vec![send()] {
                h.sent(result);
            }
        }
        let wake = h.machine.next_wake().expect("a heartbeat is always ahead");
        assert!(wake > h.at(), "round {round}: wake {wake:?} is not ahead");
    }
}

fn stale_view(h: &Harness) -> Input {
    Input::ViewStale {
        since: h.at() - Duration::from_secs(60),
        reason: "the pod watch is failing".to_owned(),
    }
}

#[test]
fn a_frozen_view_is_never_heartbeaten_and_shows_stale() {
    let mut h = Harness::new();
    h.first_report("a");
    assert_eq!(h.condition("Ready"), ("True".into(), "Reported".into()));

    // The watch has failed past the bound: the worker wakes the machine, whose
    // build finds the view stale.
    h.advance(Duration::from_secs(100));
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    let effects = h.step(stale_view(&h));
    assert_eq!(events(&effects), vec![(EventType::Warning, "ViewStale")]);
    assert_eq!(effects.last(), Some(&Effect::WriteStatus));
    assert_eq!(
        h.condition("Stale"),
        ("True".into(), "NoRecentReport".into())
    );
    assert_eq!(h.condition("Ready").0, "False");
    let env = KosliEnvironment::new("prod", KosliEnvironmentSpec::default());
    let status = h.machine.status(&env, h.now());
    let stale = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stale")
        .unwrap();
    assert_eq!(stale.message, "the pod watch is failing");

    // Each heartbeat due while it lasts builds, finds the view stale, and
    // sends nothing; the Event is not repeated.
    for _ in 0..2 {
        assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
        let effects = h.step(stale_view(&h));
        assert_eq!(effects, vec![Effect::WriteStatus], "no send, no new Event");
    }
    assert_eq!(
        h.machine.next_wake(),
        None,
        "nothing due: it waits for the view"
    );

    // The watch lists again: the fresh view is reported at once (the heartbeat
    // is long due), even with the same hash, and the status is current again.
    h.advance(Duration::from_secs(30));
    h.changed();
    assert_eq!(h.wake_and_build("a"), vec![send()]);
    h.sent(Ok(()));
    assert_eq!(h.condition("Stale"), ("False".into(), "Fresh".into()));
    assert_eq!(h.condition("Ready"), ("True".into(), "Reported".into()));
}

#[test]
fn a_frozen_view_holds_a_changed_snapshot_too() {
    let mut h = Harness::new();
    h.first_report("a");
    h.advance(Duration::from_secs(5));
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    let effects = h.step(stale_view(&h));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Send { .. })));
    // While stale, an incomplete re-list answers Built(None): still stale.
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    assert!(h.step(Input::Built(None)).is_empty());
    assert_eq!(h.condition("Stale").0, "True");
}

#[test]
fn a_report_carries_its_first_change_until_kosli_accepts_it() {
    let mut h = Harness::new();
    h.first_report("a");
    assert_eq!(h.machine.unreported_since(), None, "reported");

    // A burst: its first change is what the report carries.
    h.advance(Duration::from_secs(10));
    let first = h.at();
    h.changed();
    assert_eq!(h.tick_at_wake(), vec![Effect::Build]);
    h.report("b");
    h.advance(Duration::from_millis(200));
    let burst = h.at();
    h.changed();
    h.advance(Duration::from_millis(500));
    h.changed();
    assert_eq!(h.wake_and_build("c"), vec![send()]);
    assert_eq!(h.machine.unreported_since(), Some(burst));
    assert!(burst > first);

    // Kosli fails: the retry carries the same first change, and changes
    // that came meanwhile do not move it.
    h.sent(Err(transient("HTTP 503", None)));
    assert_eq!(h.machine.unreported_since(), Some(burst));
    h.changed();
    assert_eq!(
        h.wake_and_build("d"),
        vec![Effect::WriteStatus],
        "the retry is not due yet"
    );
    assert_eq!(h.machine.unreported_since(), Some(burst));
    assert_eq!(h.wake_and_build("d"), vec![send()], "the retry");
    assert_eq!(h.machine.unreported_since(), Some(burst));
    h.sent(Ok(()));
    assert_eq!(h.machine.unreported_since(), None, "accepted");
}

#[test]
fn changes_kosli_already_holds_and_heartbeats_carry_none() {
    let mut h = Harness::new();
    h.first_report("a");
    // Changes that cancel out: the snapshot is what Kosli holds.
    h.advance(Duration::from_secs(10));
    assert_eq!(h.change_and_build("a"), vec![Effect::WriteStatus]);
    assert_eq!(h.machine.unreported_since(), None);
    // The heartbeat sends the same snapshot: no change is carried.
    assert_eq!(h.wake_and_build("a"), vec![send()]);
    assert_eq!(h.machine.unreported_since(), None);
}

#[test]
fn a_lost_term_leaves_its_changes_to_the_next_leader() {
    let mut h = Harness::new();
    h.first_report("a");
    h.advance(Duration::from_secs(10));
    h.changed();
    assert_eq!(h.wake_and_build("b"), vec![send()]);
    assert!(h.machine.unreported_since().is_some());
    h.step(Input::Leadership(false));
    assert_eq!(h.machine.unreported_since(), None);
}
