//! Shared by the integration tests. Each test file uses a part of it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod chart_pod;
pub mod fake_kosli;
pub mod helm;
pub mod hostile_registry;
pub mod image_env;
pub mod operator;
pub mod setup;
pub mod testenv;
pub mod tools;
pub mod webhook;

pub use image_env::image_env;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The built binary under test; `KOSLI_OPERATOR_BIN` names another copy (a
/// build directory shared by several checkouts may be rebuilt mid-run).
pub fn binary() -> PathBuf {
    std::env::var_os("KOSLI_OPERATOR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kosli-operator")),
        PathBuf::from,
    )
}

/// Which build of the operator [`binary`] is, and the environment benchmarks
/// give it (see [`operator::Operator::start_default_pacing`]), for their
/// reports: the build profile is the name of the directory cargo put it in.
pub fn binary_label() -> String {
    let path = binary();
    let profile = path
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str());
    let build = match profile {
        Some("dist") => "the `dist` build of the operator (as the image ships it)".to_owned(),
        Some("release") => "the release build of the operator".to_owned(),
        _ => format!("the operator binary `{}`", path.display()),
    };
    let env: Vec<String> = image_env()
        .into_iter()
        .map(|(name, value)| format!("`{name}={value}`"))
        .collect();
    if env.is_empty() {
        build
    } else {
        format!("{build}, run with the image's {}", env.join(", "))
    }
}

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// An `http://127.0.0.1:PORT` URL where nothing listens (the port was just freed).
pub fn closed_loopback_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Variables of the caller that would change what the binary does.
const CALLER_VARS: [&str; 16] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "KOSLI_HOST",
    "KOSLI_ORG",
    "KOSLI_API_TOKEN",
    "KOSLI_API_TOKEN_FILE",
    "KOSLI_DRY_RUN",
    "KOSLI_HTTP_PROXY",
    "KOSLI_MAX_API_RETRIES",
    "KOSLI_CA_BUNDLE",
    "KOSLI_LOG_FORMAT",
    "KUBECONFIG",
];

/// The binary with `args`, run in the repository with only `env` of ours set.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(repo_file(""));
    for var in CALLER_VARS {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").envs(env.iter().copied());
    cmd
}

pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("binary runs")
}

/// Owned copies of `args`, as `run_async` takes them.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs the binary off the async runtime, so a fake Kosli in this process can answer.
pub async fn run_async(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .expect("join")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pod names of a K8S report body, in report order.
pub fn pod_names(report: &serde_json::Value) -> Vec<String> {
    report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["podName"].as_str().unwrap().to_owned())
        .collect()
}
