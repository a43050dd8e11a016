//! `--log-format` through the built binary: with `json` (or KOSLI_LOG_FORMAT)
//! every stderr line is one JSON object a log pipeline can parse, stdout still
//! carries only the command's output, and the token is not logged.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use serde_json::Value;
use support::{closed_loopback_url, run, stderr, stdout};

const SECRET: &str = "s3cr3t-token-the-logs-must-not-show";

/// Every stderr line, parsed.
fn json_lines(err: &str) -> Vec<Value> {
    assert!(!err.trim().is_empty(), "nothing logged");
    err.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_beside_the_dry_run_body() {
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--dry-run",
            "--log-format",
            "json",
        ],
        &[],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let golden =
        std::fs::read_to_string(support::repo_file("examples/pods.snapshot.json")).unwrap();
    assert_eq!(stdout(&o), golden, "stdout is the body alone");
    let lines = json_lines(&err);
    let skipped = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("skipping Running pod search-7f8e9d0c1-lk3js"))
        })
        .unwrap_or_else(|| panic!("the pod warning is not logged:\n{err}"));
    assert_eq!(skipped["level"], "WARN");
    assert!(skipped["timestamp"].is_string(), "{skipped}");
}

#[test]
fn the_variable_selects_json_and_a_failed_report_logs_no_token() {
    let nowhere = closed_loopback_url();
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--host",
            &nowhere,
            "--org",
            "acme",
            "--max-api-retries",
            "0",
        ],
        &[("KOSLI_LOG_FORMAT", "json"), ("KOSLI_API_TOKEN", SECRET)],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines = json_lines(&err);
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["environment"] == "production"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("environment not reported"))),
        "the failure is an error, its environment a field of its own:\n{err}"
    );
    assert!(!err.contains(SECRET), "the token is logged:\n{err}");
}

#[test]
fn text_stays_the_default() {
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--dry-run",
        ],
        &[],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.lines().all(|l| !l.starts_with('{')) && err.contains(" WARN "),
        "{err}"
    );
}
