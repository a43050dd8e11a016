//! `kosli-operator run` refuses watch scopes and environment files that
//! cannot work before it connects to anything: exit 2 with a message naming
//! the flag.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use support::{run, stderr};

#[test]
fn overlapping_or_invalid_watch_namespaces_are_usage_errors() {
    // "" beside named namespaces would mean all namespaces and those again.
    for flag in [
        "--watch-namespaces=a,",
        "--watch-namespaces=,a",
        "--watch-namespaces=",
        "--watch-namespaces=a,Team",
    ] {
        let o = run(
            &[
                "run",
                flag,
                "--http-addr",
                "127.0.0.1:0",
                "--kubeconfig",
                "/nonexistent",
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--watch-namespaces"),
            "{flag}: {}",
            stderr(&o)
        );
        assert!(
            !stderr(&o).contains("nonexistent"),
            "refused before the kubeconfig is read: {}",
            stderr(&o)
        );
    }
}

/// `--environments-file` is checked whole before anything connects: with no
/// status to show an invalid entry later, the start fails, naming the file,
/// the entry and what is wrong.
#[test]
fn an_environments_file_is_checked_before_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("environments.yaml");
    let entry = |name: &str, extra: &str| {
        format!(
            "apiVersion: kosli.com/v1alpha1\nkind: KosliEnvironment\nmetadata:\n  name: {name}\n\
             spec:\n  namespaces: [shop]\n{extra}"
        )
    };
    for (text, says) in [
        (
            entry("shop", "  gate:\n    mode: false\n"),
            "spec.gate.mode: a boolean where a string is expected",
        ),
        (
            entry("shop", "  podSelecter: {}\n"),
            "spec.podSelecter: not a field",
        ),
        (
            entry("shop", "  namespacesRegex: ['(']\n"),
            "document 1 (shop)",
        ),
        (
            entry("payments", "  namespaces: [payments]\n").replace("  namespaces: [shop]\n", ""),
            "spec selects namespaces outside --watch-namespaces (shop)",
        ),
        (String::new(), "no KosliEnvironment in it"),
    ] {
        std::fs::write(&file, &text).unwrap();
        let o = run(
            &[
                "run",
                "--watch-namespaces=shop",
                "--environments-file",
                file.to_str().unwrap(),
                "--http-addr",
                "127.0.0.1:0",
                "--kubeconfig",
                "/nonexistent",
            ],
            &[],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("environments.yaml") && err.contains(says),
            "{says}: {err}"
        );
        assert!(!err.contains("nonexistent"), "before the kubeconfig: {err}");
    }
    let o = run(
        &[
            "run",
            "--environments-file=x.yaml",
            "--environment-selector=a=b",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}
