//! Plain-HTTP endpoints for Prometheus and the kubelet: `/metrics`, `/livez`,
//! `/readyz`. Separate from the webhook's TLS port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Binds now (so a taken port fails start-up) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
        what: format!("listen on --http-addr {addr}"),
        source,
    })?;
    tracing::info!(%addr, "serving /metrics, /livez and /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("failed to accept a connection: {e}");
                        continue;
                    }
                },
            };
            let (metrics, health, shutdown) = (metrics.clone(), health.clone(), shutdown.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = route(req.uri().path(), &metrics, health.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = connection => {}
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
