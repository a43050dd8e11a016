//! `kosli-operator run` refuses watch scopes that cannot work before it
//! connects to anything: exit 2 with a message naming the flag.

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
