//! Plain-HTTP endpoints for Prometheus and the kubelet: `/metrics`, `/livez`,
//! `/readyz`. Separate from the webhook's TLS port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::observe::metrics::Metrics;

/// What the endpoints read.
pub trait Health: Send + Sync + 'static {
    /// Ready to serve: the watches have listed everything once.
    fn is_ready(&self) -> bool;
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn route(path: &str, metrics: &Metrics, health: &dyn Health) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.encode(),
        ),
        "/livez" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: watches are still listing\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Bounds on what a client of the port may hold. The port is plain HTTP and
/// reachable by anything allowed to scrape it, so no client may keep a task or
/// a socket for long.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// For a request's headers to arrive. An idle keep-alive connection is
    /// waiting for its next request's headers, so this also closes
    /// connections idle for longer.
    pub header_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the backlog.
    pub max_connections: usize,
    /// Pause after a failed accept (typically out of file descriptors), so
    /// the loop does not spin on an error that repeats at once.
    pub accept_backoff: Duration,
}

impl Default for HttpLimits {
    /// Probes and scrapes send their whole request at once and scrape every
    /// 10-60 s; 5 s for headers (and idleness) and 64 connections leave them
    /// ample room.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            max_connections: 64,
            accept_backoff: Duration::from_millis(100),
        }
    }
}

/// Binds now (so a taken port fails start-up) and serves until `shutdown`,
/// with the default limits.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    serve_with(addr, HttpLimits::default(), metrics, health, shutdown)
        .await
        .map(|(_, task)| task)
}

/// As [`serve`], with explicit limits; also returns the bound address (so
/// callers can ask for port 0).
pub async fn serve_with(
    addr: SocketAddr,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
        what: format!("listen on --http-addr {addr}"),
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: format!("read the bound address of --http-addr {addr}"),
        source,
    })?;
    tracing::info!(addr = %bound, "serving /metrics, /livez and /readyz");
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let task = tokio::spawn(async move {
        loop {
            let Some((slot, stream, _)) = accept_capped(
                &listener,
                &slots,
                &shutdown,
                limits.accept_backoff,
                "metrics",
            )
            .await
            else {
                return;
            };
            let (metrics, health, shutdown) = (metrics.clone(), health.clone(), shutdown.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = route(req.uri().path(), &metrics, health.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = connection => {}
                }
                drop(slot);
            });
        }
    });
    Ok((bound, task))
}

/// The next connection once fewer than the cap are served, with the slot it
/// holds until dropped; `None` at shutdown. At the cap, new connections wait
/// in the listen backlog until a served one ends (each server bounds its
/// connections in time, so one does). A failed accept (typically EMFILE) is
/// followed by `backoff` rather than spinning on it.
pub async fn accept_capped(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    backoff: Duration,
    server: &'static str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => return None,
            // Never closed; should it be, nothing more can be served.
            slot = slots.clone().acquire_owned() => slot.ok()?,
        };
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((slot, stream, peer)),
                Err(e) => {
                    tracing::warn!(server, "failed to accept a connection: {e}");
                    tokio::time::sleep(backoff).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Fixed(bool);
    impl Health for Fixed {
        fn is_ready(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn routes() {
        let m = Metrics::new().unwrap();
        assert_eq!(route("/livez", &m, &Fixed(false)).status(), StatusCode::OK);
        assert_eq!(
            route("/readyz", &m, &Fixed(false)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(route("/readyz", &m, &Fixed(true)).status(), StatusCode::OK);
        assert_eq!(route("/metrics", &m, &Fixed(true)).status(), StatusCode::OK);
        assert_eq!(
            route("/nope", &m, &Fixed(true)).status(),
            StatusCode::NOT_FOUND
        );
    }

    const LIVEZ: &[u8] = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";

    async fn start(limits: HttpLimits) -> (SocketAddr, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (addr, _task) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            limits,
            Arc::new(Metrics::new().unwrap()),
            Arc::new(Fixed(true)),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (addr, shutdown)
    }

    fn limits(header_timeout: Duration, max_connections: usize) -> HttpLimits {
        HttpLimits {
            header_timeout,
            max_connections,
            ..HttpLimits::default()
        }
    }

    /// Reads until the server closes; how long that took from `since`, or
    /// None if it stayed open for `patience`.
    async fn closed_after(
        stream: &mut TcpStream,
        since: Instant,
        patience: Duration,
    ) -> Option<Duration> {
        let mut sink = Vec::new();
        // A reset instead of a clean close is still a close.
        let read = tokio::time::timeout(patience, stream.read_to_end(&mut sink)).await;
        read.ok().map(|_| since.elapsed())
    }

    /// One request on a fresh connection; the status line of the answer.
    async fn status_line(stream: &mut TcpStream) -> String {
        stream.write_all(LIVEZ).await.unwrap();
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_client_trickling_its_headers_is_cut_after_the_header_timeout() {
        let timeout = Duration::from_millis(800);
        let (addr, shutdown) = start(limits(timeout, 8)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        let (mut reader, mut writer) = stream.split();
        let trickle = async {
            while writer.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let mut sink = Vec::new();
        let closed = tokio::select! {
            () = trickle => Some(start.elapsed()),
            _ = reader.read_to_end(&mut sink) => Some(start.elapsed()),
            () = tokio::time::sleep(Duration::from_secs(5)) => None,
        };
        let took = closed.expect("the connection is closed while the client trickles");
        assert!(
            took >= timeout - Duration::from_millis(50) && took < timeout * 3,
            "cut after {took:?}, header timeout {timeout:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_bound() {
        let timeout = Duration::from_millis(800);
        let (addr, shutdown) = start(limits(timeout, 8)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(status_line(&mut stream).await, "HTTP/1.1 200 OK");
        let idle_since = Instant::now();
        let took = closed_after(&mut stream, idle_since, Duration::from_secs(5))
            .await
            .expect("an idle keep-alive connection is closed");
        assert!(
            took >= timeout - Duration::from_millis(50) && took < timeout * 3,
            "closed after {took:?} idle, bound {timeout:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
        let timeout = Duration::from_millis(1500);
        let (addr, shutdown) = start(limits(timeout, 3)).await;
        // Three silent connections take every slot.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        // The kernel completes the handshake (backlog); the server does not serve it.
        let mut late = TcpStream::connect(addr).await.unwrap();
        late.write_all(LIVEZ).await.unwrap();
        let mut buf = vec![0; 1024];
        let early = tokio::time::timeout(Duration::from_millis(700), late.read(&mut buf)).await;
        assert!(early.is_err(), "served beyond the cap: {early:?}");
        // Once the silent ones are cut by the header timeout, it is answered.
        let n = tokio::time::timeout(Duration::from_secs(5), late.read(&mut buf))
            .await
            .expect("served once a slot frees")
            .unwrap();
        let took = start.elapsed();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert!(took >= timeout - Duration::from_millis(200), "{took:?}");
        for mut stream in held {
            assert!(
                closed_after(&mut stream, start, Duration::from_secs(1))
                    .await
                    .is_some()
            );
        }
        // And it keeps serving.
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        assert_eq!(status_line(&mut fresh).await, "HTTP/1.1 200 OK");
        shutdown.cancel();
    }
}
