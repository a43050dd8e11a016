//! The committed CRD is exactly what the Rust types generate, and the examples
//! parse with them.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use kosli_operator::core::crd::{KosliEnvironment, crd_yaml};

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed =
        std::fs::read_to_string(support::repo_file("crds/koslienvironments.kosli.com.yaml"))
            .unwrap();
    assert_eq!(
        crd_yaml().unwrap(),
        committed,
        "crds/ is stale: run `cargo run -- crd > crds/koslienvironments.kosli.com.yaml`"
    );
}

#[test]
fn example_kosli_environments_parse_and_validate() {
    let dir = support::repo_file("examples/environments");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text
            .split("\n---\n")
            .filter(|d| d.contains("kind: KosliEnvironment"))
        {
            let env: KosliEnvironment =
                serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            env.spec
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the example KosliEnvironments, found {seen}"
    );
}
