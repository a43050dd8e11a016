//! `kosli-operator run` as a child process, for tests against the real
//! apiserver: started with the fake Kosli's settings, probed over its HTTP port,
//! stopped with SIGTERM or killed like a crashed pod.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fake_kosli::{FakeKosli, ORG, TOKEN};

pub struct Operator {
    child: Child,
    pub http: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator on `kubeconfig`, handling only KosliEnvironments
    /// labelled `test=<selector>`, with the Lease `lease`, pacing reports fast
    /// (`--debounce 200ms --max-debounce 2s`) to keep tests short.
    pub fn start(
        kubeconfig: &Path,
        fake: &FakeKosli,
        selector: &str,
        lease: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec!["--debounce", "200ms", "--max-debounce", "2s"];
        args.extend_from_slice(extra);
        Self::spawn(kubeconfig, fake, selector, lease, &args, env, &[])
    }

    /// As `start`, with the operator's own defaults (`--debounce 1s`,
    /// `--max-debounce 2s`) and the environment the image gives it (see
    /// [`super::image_env`]): benchmarks measure the operator as it ships.
    pub fn start_default_pacing(
        kubeconfig: &Path,
        fake: &FakeKosli,
        selector: &str,
        lease: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let image_env = super::image_env();
        Self::spawn(kubeconfig, fake, selector, lease, extra, env, &image_env)
    }

    fn spawn(
        kubeconfig: &Path,
        fake: &FakeKosli,
        selector: &str,
        lease: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        image_env: &[(String, String)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let port = super::free_port();
        let mut cmd = Command::new(super::binary());
        cmd.args([
            "run",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--environment-selector",
            &format!("test={selector}"),
            "--lease-name",
            lease,
            "--lease-namespace",
            "default",
        ])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("KOSLI_HOST", &fake.url)
        .env("KOSLI_ORG", ORG)
        .env("KOSLI_API_TOKEN", TOKEN)
        .envs(image_env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&self.http, path).await
    }

    /// Waits for /readyz, failing with the operator's log if it never comes.
    pub async fn wait_ready(&mut self) {
        wait_ready(&mut self.child, &self.http, &self.log).await;
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of one series, e.g. `kosli_operator_leader` or
    /// `kosli_operator_reports_total{environment="x",result="sent"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.http, series).await
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop on SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash, with no chance to release the Lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one series on the operator whose HTTP port is `http`; usable
/// from a task that does not own the [`Operator`].
pub async fn metric(http: &str, series: &str) -> Option<f64> {
    let (_, body) = get(http, "/metrics").await?;
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// GET `path` from an operator's HTTP port (never through a proxy): its status and body.
async fn get(http: &str, path: &str) -> Option<(u16, String)> {
    kosli_operator::tls::install_crypto_provider();
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{http}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Waits until the operator process `child` answers 200 on `http`/readyz, failing
/// with its log (the file `log`) if it exits or is not ready within 30 s.
pub async fn wait_ready(child: &mut Child, http: &str, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some((200, _)) = get(http, "/readyz").await {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("operator exited with {status}:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("operator not ready within 30 s:\n{}", log());
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
