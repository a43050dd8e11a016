//! A registry on loopback that misbehaves as an attacker would: manifests and
//! token answers that never end, answers that never come, token lifetimes at
//! the numeric limit, token realms on another host. Speaks just enough HTTP/1.1
//! by hand that nothing between it and the operator smooths it over.
//!
//! The first path segment after `/v2/` picks the behaviour:
//! - `endless`: HEAD without a digest, then a GET whose body never ends;
//! - `hang`: never answers;
//! - `overflow`: a Bearer challenge whose token lives `u64::MAX` seconds, then
//!   the manifest digest [`OVERFLOW_DIGEST`];
//! - `bigtoken`: a Bearer challenge whose token answer never ends;
//! - `elsewhere`: a Bearer challenge whose realm names `localhost` instead of
//!   `127.0.0.1`: another host, whose requests are recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The digest the `overflow` repository's tags resolve to.
pub const OVERFLOW_DIGEST: &str =
    "sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

#[derive(Clone)]
pub struct HostileRegistry {
    pub addr: SocketAddr,
    /// Request lines and Authorization headers that reached the `elsewhere`
    /// realm: credentials must never arrive there.
    pub elsewhere: Arc<Mutex<Vec<String>>>,
}

impl HostileRegistry {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Self {
            addr,
            elsewhere: Arc::default(),
        };
        let serving = registry.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let registry = serving.clone();
                tokio::spawn(async move { registry.serve(stream).await });
            }
        });
        registry
    }

    /// `127.0.0.1:PORT/<behaviour>:tag`.
    pub fn image(&self, behaviour: &str, tag: &str) -> String {
        format!("{}/{behaviour}:{tag}", self.addr)
    }

    async fn serve(&self, mut stream: TcpStream) {
        let Some((request_line, headers)) = read_head(&mut stream).await else {
            return;
        };
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let authorization = headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let port = self.addr.port();
        let challenge = |realm: String| {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"hostile\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        if path.starts_with("/token-overflow") {
            let body = r#"{"token":"overflow-token","expires_in":18446744073709551615}"#;
            let _ = stream.write_all(json_answer(body).as_bytes()).await;
        } else if path.starts_with("/token-big") {
            endless(&mut stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"token\":\"").await;
        } else if path.starts_with("/token-elsewhere") {
            self.elsewhere
                .lock()
                .unwrap()
                .push(format!("{request_line} | authorization: {authorization}"));
            let _ = stream
                .write_all(json_answer(r#"{"token":"elsewhere-token"}"#).as_bytes())
                .await;
        } else if path.starts_with("/v2/endless/") {
            if method == "HEAD" {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            } else {
                endless(&mut stream, "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n{\"layers\":[").await;
            }
        } else if path.starts_with("/v2/hang/") {
            tokio::time::sleep(Duration::from_secs(120)).await;
        } else if path.starts_with("/v2/overflow/") {
            let answer = if authorization == "Bearer overflow-token" {
                format!(
                    "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {OVERFLOW_DIGEST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            } else {
                challenge(format!("http://127.0.0.1:{port}/token-overflow"))
            };
            let _ = stream.write_all(answer.as_bytes()).await;
        } else if path.starts_with("/v2/bigtoken/") {
            let answer = challenge(format!("http://127.0.0.1:{port}/token-big"));
            let _ = stream.write_all(answer.as_bytes()).await;
        } else if path.starts_with("/v2/elsewhere/") {
            let answer = challenge(format!("http://localhost:{port}/token-elsewhere"));
            let _ = stream.write_all(answer.as_bytes()).await;
        } else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    }
}

fn json_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `head`, then filler until the client goes away (or ten minutes).
async fn endless(stream: &mut TcpStream, head: &str) {
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let filler = vec![b'0'; 64 * 1024];
    let stop = tokio::time::Instant::now() + Duration::from_secs(600);
    while tokio::time::Instant::now() < stop {
        if stream.write_all(&filler).await.is_err() {
            return;
        }
    }
}

/// The request line and the header block, or `None` for a broken request.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let (line, headers) = text.split_once("\r\n")?;
    Some((line.to_owned(), headers.to_owned()))
}
