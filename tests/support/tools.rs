//! The test environment's command-line tools (HELM, KUBECTL,
//! KUBERNETES_VALIDATE), run without the caller's cluster or Helm settings.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::testenv::tool;

/// Runs `cmd`, feeding it `stdin`.
pub fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Stdout then stderr, as text: what a failing assertion shows.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A command that does not pick up the caller's cluster or Helm settings.
pub fn isolated(program: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("KUBECONFIG").env_remove("HELM_NAMESPACE");
    cmd
}

/// `kubectl --kubeconfig KUBECONFIG ARGS...`, fed `stdin`.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = isolated(tool("KUBECTL"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    run(&mut cmd, stdin)
}
