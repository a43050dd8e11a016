//! `kosli-operator snapshot` through the built binary: dry-run output, namespace
//! flags, config files, input errors, and real reports to the strict fake Kosli.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::io::Write;
use std::process::{Output, Stdio};

use serde_json::Value;
use support::fake_kosli::{FakeKosli, ORG, Scripted, TOKEN};
use support::{command, repo_file, run, run_async, stderr, stdout, strings};

/// `snapshot ARGS --from-file examples/pods.json --dry-run`.
fn offline(args: &[&str]) -> Output {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--from-file", "examples/pods.json", "--dry-run"]);
    run(&all, &[])
}

fn dry_run(extra: &[&str]) -> Output {
    let mut args = vec![
        "snapshot",
        "production",
        "--from-file",
        "examples/pods.json",
        "--dry-run",
    ];
    args.extend_from_slice(extra);
    run(&args, &[])
}

/// (namespace, podName) of every artifact of a body.
fn pods_of(body: &Value) -> Vec<(String, String)> {
    body["artifacts"]
        .as_array()
        .expect("artifacts array")
        .iter()
        .map(|a| {
            (
                a["namespace"].as_str().unwrap().to_owned(),
                a["podName"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn namespaces_of(body: &Value) -> Vec<String> {
    let mut ns: Vec<String> = pods_of(body).into_iter().map(|(ns, _)| ns).collect();
    ns.dedup();
    ns
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", stdout(o)))
}

fn assert_usage_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "stderr lacks {needle:?}: {}",
        stderr(o)
    );
    assert!(o.stdout.is_empty(), "stdout must stay empty: {}", stdout(o));
}

#[test]
fn dry_run_of_the_shipped_pods_is_the_golden_payload() {
    let o = dry_run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let golden = std::fs::read_to_string(repo_file("examples/pods.snapshot.json")).unwrap();
    assert_eq!(stdout(&o), golden);
    let err = stderr(&o);
    assert!(
        err.contains("skipping Running pod search-7f8e9d0c1-lk3js in namespace prod"),
        "{err}"
    );
    assert!(
        err.contains(
            "cache-6c5b4a3d2-rt8vx in namespace prod has containers without a usable image ID"
        ),
        "{err}"
    );
}

#[test]
fn dry_run_from_stdin() {
    let mut child = command(
        &["snapshot", "production", "--from-file", "-", "--dry-run"],
        &[],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pods = std::fs::read(repo_file("examples/pods.json")).unwrap();
    child.stdin.take().unwrap().write_all(&pods).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        std::fs::read_to_string(repo_file("examples/pods.snapshot.json")).unwrap()
    );
}

#[test]
fn kosli_dry_run_variable_turns_dry_run_on() {
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ],
        &[("KOSLI_DRY_RUN", "true")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        std::fs::read_to_string(repo_file("examples/pods.snapshot.json")).unwrap()
    );
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ],
        &[("KOSLI_DRY_RUN", "false")],
    );
    assert_usage_error(&o, "a Kosli organization is required");
}

#[test]
fn namespaces_flag_selects_exact_names() {
    let o = dry_run(&["-n", "staging,monitoring"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(namespaces_of(&json(&o)), ["monitoring", "staging"]);
    let o = dry_run(&["--namespaces", "prod", "--namespaces", "batch"]);
    assert_eq!(namespaces_of(&json(&o)), ["batch", "prod"]);
}

#[test]
fn namespaces_regex_is_unanchored() {
    let o = dry_run(&["--namespaces-regex", "team-"]);
    assert_eq!(namespaces_of(&json(&o)), ["team-payments", "team-search"]);
    let o = dry_run(&["--namespaces-regex", "^prod$,^batch$"]);
    assert_eq!(namespaces_of(&json(&o)), ["batch", "prod"]);
}

#[test]
fn exclude_flags_remove_namespaces() {
    let o = dry_run(&[
        "-x",
        "kube-system,default",
        "--exclude-namespaces-regex",
        "^team-",
    ]);
    assert_eq!(
        namespaces_of(&json(&o)),
        ["batch", "monitoring", "prod", "staging"]
    );
}

#[test]
fn include_and_exclude_mixed_is_refused() {
    assert_usage_error(
        &dry_run(&["-n", "prod", "-x", "kube-system"]),
        "cannot be combined",
    );
    assert_usage_error(
        &dry_run(&["--namespaces-regex", "a", "--exclude-namespaces-regex", "b"]),
        "cannot be combined",
    );
}

#[test]
fn bad_regex_is_refused_with_the_pattern() {
    assert_usage_error(
        &dry_run(&["--namespaces-regex", "team-("]),
        "invalid include namespace regex \"team-(\"",
    );
}

#[test]
fn environment_name_is_required_and_validated() {
    let o = offline(&[]);
    assert_usage_error(
        &o,
        "an ENVIRONMENT-NAME argument or --config-file is required",
    );
    let o = offline(&["-bad name"]);
    assert_eq!(o.status.code(), Some(2));
    let o = offline(&["bad/name"]);
    assert_usage_error(&o, "does not match Kosli's pattern");
}

#[test]
fn config_file_dry_run_maps_each_environment_to_its_body() {
    let o = offline(&["--config-file", "examples/snapshot-config.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.matches('\n').count(), 1, "one document, one line");
    let doc = json(&o);
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["platform", "production", "teams"]);
    assert!(
        text.starts_with(r#"{"production":{"artifacts":["#),
        "config order is kept: {text}"
    );
    assert_eq!(namespaces_of(&doc["production"]), ["prod"]);
    assert_eq!(
        namespaces_of(&doc["teams"]),
        ["team-payments", "team-search"]
    );
    assert_eq!(
        namespaces_of(&doc["platform"]),
        ["batch", "default", "kube-system", "monitoring"]
    );
    // Each body is byte-for-byte what a single-environment run prints.
    let single = dry_run(&["-n", "prod"]);
    assert!(text.contains(stdout(&single).trim_end()));
}

#[test]
fn config_file_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("environments: []\n", "no environments"),
        (
            "environments:\n- name: a\n- name: a\n",
            "environments[0] and environments[1] both report to \"a\"",
        ),
        (
            "environments:\n- namespaces: [x]\n",
            "environments[0]: name is required",
        ),
        (
            "environments:\n- name: a\n  namespaces: [x]\n  excludeNamespaces: [y]\n",
            "cannot be combined",
        ),
        (
            "environments:\n- name: a\n  excludeNamespacesRegex: ['[']\n",
            "invalid exclude namespace regex",
        ),
        ("environments:\n- name: a\n  namespace: [x]\n", "namespace"),
        ("environments: [\n", "config file"),
    ];
    for (i, (content, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&path, content).unwrap();
        let o = offline(&["--config-file", path.to_str().unwrap()]);
        assert_usage_error(&o, needle);
    }
    let o = offline(&["--config-file", "/nonexistent/c.yaml"]);
    assert_usage_error(&o, "failed to read /nonexistent/c.yaml");
}

#[test]
fn config_file_conflicts_with_name_and_namespace_flags() {
    let o = offline(&["prod", "--config-file", "examples/snapshot-config.yaml"]);
    assert_usage_error(
        &o,
        "cannot use --config-file together with an environment name argument",
    );
    let o = offline(&["--config-file", "examples/snapshot-config.yaml", "-n", "x"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_input_files_fail_before_anything_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let pods = std::fs::read(repo_file("examples/pods.json")).unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &pods[..pods.len() / 2]).unwrap();
    let single_pod = dir.path().join("pod.json");
    std::fs::write(
        &single_pod,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#,
    )
    .unwrap();
    let wrong_type = dir.path().join("wrong.json");
    std::fs::write(
        &wrong_type,
        String::from_utf8(pods.clone()).unwrap().replacen(
            r#""phase": "Running""#,
            r#""phase": 3"#,
            1,
        ),
    )
    .unwrap();
    for (path, needle) in [
        (truncated.to_str().unwrap(), "EOF while parsing"),
        (single_pod.to_str().unwrap(), "found kind \"Pod\""),
        (wrong_type.to_str().unwrap(), "invalid type: integer `3`"),
        (
            "/nonexistent/pods.json",
            "failed to read /nonexistent/pods.json",
        ),
    ] {
        let o = run(
            &["snapshot", "production", "--from-file", path, "--dry-run"],
            &[],
        );
        assert_usage_error(&o, needle);
    }
}

#[tokio::test]
async fn report_sends_exactly_the_dry_run_body() {
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    let o = run_async(
        strings(&[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ]),
        fake.cli_env(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("[14] pods were reported to environment production"),
        "{}",
        stderr(&o)
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let golden = std::fs::read(repo_file("examples/pods.snapshot.json")).unwrap();
    assert_eq!(
        requests[0].body,
        golden[..golden.len() - 1],
        "the PUT body is the dry-run body"
    );
    assert!(!stderr(&o).contains(TOKEN));
}

fn golden() -> String {
    std::fs::read_to_string(repo_file("examples/pods.snapshot.json")).unwrap()
}

/// `kosli snapshot k8s ENV` and its alias `kubernetes` work as `snapshot ENV`.
#[test]
fn the_clis_k8s_and_kubernetes_words_are_accepted() {
    for words in [&["k8s", "production"][..], &["kubernetes", "production"]] {
        let o = offline(words);
        assert!(o.status.success(), "{words:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), golden(), "{words:?}");
    }
    let o = offline(&["k8s", "--config-file", "examples/snapshot-config.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&o).as_object().unwrap().keys().collect::<Vec<_>>(),
        ["platform", "production", "teams"]
    );
    let o = offline(&["docker", "production"]);
    assert_usage_error(&o, "got \"docker\" first");
    let o = offline(&["k8s", "a", "b"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Every flag also reads `KOSLI_<FLAG>`, as in the Kosli CLI: a CronJob's
/// variables select exactly what its flags would, and a flag on the command
/// line wins over its variable.
#[test]
fn kosli_variables_set_what_their_flags_set() {
    /// Variables, flags, and the namespaces the report then covers.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 6] = [
        (
            &[("KOSLI_NAMESPACES", "prod,staging")],
            &[],
            &["prod", "staging"],
        ),
        (
            &[("KOSLI_NAMESPACES_REGEX", "^team-")],
            &[],
            &["team-payments", "team-search"],
        ),
        (
            &[(
                "KOSLI_EXCLUDE_NAMESPACES",
                "prod,staging,batch,team-payments,team-search",
            )],
            &[],
            &["default", "kube-system", "monitoring"],
        ),
        (
            &[("KOSLI_EXCLUDE_NAMESPACES_REGEX", "^(prod|staging|team-.*)$")],
            &[],
            &["batch", "default", "kube-system", "monitoring"],
        ),
        (
            &[("KOSLI_NAMESPACES", "prod")],
            &["-n", "staging"],
            &["staging"],
        ),
        (
            &[("KOSLI_DRY_RUN", "true"), ("KOSLI_NAMESPACES", "batch")],
            &[],
            &["batch"],
        ),
    ];
    for (env, flags, namespaces) in cases {
        let mut args = vec![
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--dry-run",
        ];
        args.extend_from_slice(flags);
        let o = run(&args, env);
        assert!(o.status.success(), "{env:?}: {}", stderr(&o));
        assert_eq!(namespaces_of(&json(&o)), namespaces, "{env:?} {flags:?}");
    }

    let o = run(
        &["snapshot", "--from-file", "examples/pods.json", "--dry-run"],
        &[("KOSLI_CONFIG_FILE", "examples/snapshot-config.yaml")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&o).as_object().unwrap().keys().collect::<Vec<_>>(),
        ["platform", "production", "teams"]
    );

    let o = run(
        &["snapshot", "production", "--dry-run"],
        &[("KOSLI_KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/kubeconfig"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--dry-run",
        ],
        &[("KOSLI_DEBUG", "true")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("DEBUG"), "{}", stderr(&o));

    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--dry-run",
        ],
        &[
            ("KOSLI_AUTO_ENVIRONMENT", "true"),
            ("KOSLI_ENVIRONMENT_DESCRIPTION", "ignored in a dry run"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "dry-run: environment production would be created with type K8S if it does not exist"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), golden());
}

/// The Kosli CLI's other spellings: the token `DRY_RUN` is a dry run,
/// `--auto-env` is `--auto-environment`, and the deprecated scaling flags are
/// accepted with the CLI's warning and change nothing.
#[test]
fn the_clis_spellings_and_deprecated_flags_are_accepted() {
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "--api-token",
            "DRY_RUN",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), golden());
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "-a",
            "DRY_RUN",
            "--auto-env",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("would be created"), "{}", stderr(&o));
    for flag in ["--include-scaling", "--exclude-scaling"] {
        let o = dry_run(&[flag]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), golden());
        let err = stderr(&o);
        assert!(
            err.contains(&format!("Flag {flag} has been deprecated"))
                && err.contains("ignored unless --auto-environment is set"),
            "{err}"
        );
    }
    let o = dry_run(&["--include-scaling", "--exclude-scaling"]);
    assert_usage_error(&o, "cannot be used with");
}

/// `--output cli` prints what the Kosli CLI prints for a dry run: its banner,
/// the URL and the same body indented by four spaces.
#[test]
fn dry_run_output_cli_is_what_the_kosli_cli_prints() {
    let o = dry_run(&["-o", "cli", "--org", "acme", "-H", "https://app.kosli.com"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let (head, rest) = text.split_at(text.find(" {").unwrap());
    assert_eq!(
        head,
        "############### THIS IS A DRY-RUN  ###############\n\
         the request would have been sent to: https://app.kosli.com/api/v2/environments/acme/production/report/K8S\n\
         this is the payload that would be sent in a real run: \n"
    );
    let body: Value = serde_json::from_str(rest).unwrap();
    let compact: Value = serde_json::from_str(&golden()).unwrap();
    assert_eq!(body, compact, "the same body");
    assert!(
        rest.contains("\n    \"artifacts\": [\n        {\n            \"podName\": "),
        "{rest}"
    );
    assert!(rest.ends_with("\n}\n"), "{rest}");
}

/// `-H`, `-a` and `-r` are the CLI's short flags for host, token and retries.
#[tokio::test]
async fn the_clis_short_flags_reach_kosli() {
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    fake.script([Scripted::status(503, "down")]);
    let o = run_async(
        strings(&[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
            "-H",
            &fake.url,
            "-a",
            TOKEN,
            "-r",
            "1",
            "--org",
            ORG,
        ]),
        Vec::new(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fake.requests().len(), 2, "one retry after the 503");
    assert_eq!(fake.reports("production").len(), 1);
}

#[tokio::test]
async fn auto_environment_without_a_description_gets_the_clis() {
    let fake = FakeKosli::start().await;
    let o = run_async(
        strings(&[
            "snapshot",
            "fresh-env",
            "--auto-environment",
            "--from-file",
            "examples/pods.json",
        ]),
        fake.cli_env(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let env = fake.state().environments["fresh-env"].clone();
    assert_eq!(env.description, "Auto-created by kosli snapshot");
}

#[tokio::test]
async fn auto_environment_creates_a_missing_environment_with_its_description() {
    let fake = FakeKosli::start().await;
    let mut args = strings(&[
        "snapshot",
        "fresh-env",
        "-A",
        "--environment-description",
        "made by kosli-operator",
        "--from-file",
        "examples/pods.json",
    ]);
    args.extend(strings(&["-n", "prod"]));
    let o = run_async(args, fake.cli_env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let env = fake.state().environments["fresh-env"].clone();
    assert_eq!(
        (env.kind.as_str(), env.description.as_str()),
        ("K8S", "made by kosli-operator")
    );
    assert_eq!(namespaces_of(&fake.reports("fresh-env")[0]), ["prod"]);
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        methods,
        [
            "GET /api/v2/environments/acme/fresh-env",
            "PUT /api/v2/environments/acme",
            "PUT /api/v2/environments/acme/fresh-env/report/K8S",
        ]
    );
}

#[tokio::test]
async fn one_failing_environment_does_not_stop_the_others() {
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    fake.add_environment("teams", "server");
    fake.add_environment("platform", "K8S");
    let mut env = fake.cli_env();
    env.push(("KOSLI_MAX_API_RETRIES".into(), "0".into()));
    let o = run_async(
        strings(&[
            "snapshot",
            "-A",
            "--config-file",
            "examples/snapshot-config.yaml",
            "--from-file",
            "examples/pods.json",
        ]),
        env,
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("exists with type \"server\""), "{err}");
    assert!(
        err.contains("1 of 3 environments were not reported"),
        "{err}"
    );
    assert_eq!(fake.reports("production").len(), 1);
    assert_eq!(fake.reports("platform").len(), 1);
    assert!(fake.reports("teams").is_empty());
}

#[tokio::test]
async fn kosli_errors_reach_the_user_with_status_and_message() {
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    fake.script([Scripted::status(
        403,
        "Service account lacks the snapshotter role",
    )]);
    let mut env = fake.cli_env();
    env.push(("KOSLI_MAX_API_RETRIES".into(), "0".into()));
    let o = run_async(
        strings(&[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ]),
        env,
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("failed with HTTP 403: Service account lacks the snapshotter role"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
}

#[tokio::test]
async fn token_file_and_flags_configure_the_client() {
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let args = vec![
        "snapshot".into(),
        "production".into(),
        "--from-file".into(),
        "examples/pods.json".into(),
        "--host".into(),
        fake.url.clone(),
        "--org".into(),
        ORG.into(),
        "--api-token-file".into(),
        token_file.to_str().unwrap().into(),
    ];
    let o = run_async(args, vec![]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fake.reports("production").len(), 1);
}

#[tokio::test]
async fn standard_proxy_variables_are_honoured() {
    // Nothing listens on the Kosli host: the report can only arrive through the
    // proxy, which is the fake itself answering an absolute-form request.
    let fake = FakeKosli::start().await;
    fake.add_environment("production", "K8S");
    let nowhere = support::closed_loopback_url();
    let mut env = fake.cli_env();
    env[0].1 = nowhere.clone();
    env.push(("HTTP_PROXY".into(), fake.url.clone()));
    let o = run_async(
        strings(&[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ]),
        env,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fake.requests()[0].uri,
        format!("{nowhere}/api/v2/environments/acme/production/report/K8S")
    );
}

#[test]
fn plain_http_kosli_host_is_refused() {
    let o = run(
        &[
            "snapshot",
            "production",
            "--from-file",
            "examples/pods.json",
        ],
        &[
            ("KOSLI_HOST", "http://kosli.example.com"),
            ("KOSLI_ORG", "acme"),
            ("KOSLI_API_TOKEN", "t"),
        ],
    );
    assert_usage_error(&o, "plain HTTP");
}

#[test]
fn crd_command_prints_the_committed_crd() {
    let o = run(&["crd"], &[]);
    assert!(o.status.success());
    let committed =
        std::fs::read_to_string(repo_file("crds/koslienvironments.kosli.com.yaml")).unwrap();
    assert_eq!(
        stdout(&o),
        committed,
        "crds/ is stale: run `cargo run -- crd > crds/koslienvironments.kosli.com.yaml`"
    );
}
