//! What a request to Kosli carries: bytes held whole, or a body written piece
//! by piece while it is sent.
//!
//! A report of 150,000 pods is about 75 MB. Held whole, it costs that much
//! memory for as long as the PUT and its retries take; streamed, a few pieces
//! are in memory at a time. The length is known before the first byte (a
//! summary counts it), so the request declares its Content-Length as a body
//! held whole does, and a body that turns out longer or shorter fails the
//! attempt rather than reaching Kosli cut or padded.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Pieces written ahead of the connection: enough to keep it busy, few
/// enough that a streamed body stays small.
const PIECES_AHEAD: usize = 2;

/// A request body.
#[derive(Clone)]
pub enum RequestBody {
    /// Held whole; each attempt shares it without a copy.
    Whole(Bytes),
    /// Written while it is sent, afresh for each attempt.
    Streamed(Streamed),
}

impl RequestBody {
    /// The length the request declares.
    pub fn len(&self) -> u64 {
        match self {
            Self::Whole(bytes) => bytes.len() as u64,
            Self::Streamed(streamed) => streamed.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body for one attempt.
    pub(super) fn open(&self) -> reqwest::Body {
        match self {
            Self::Whole(bytes) => reqwest::Body::from(bytes.clone()),
            Self::Streamed(streamed) => streamed.open(),
        }
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(bytes)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Whole(bytes.into())
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        Self::Whole(text.into())
    }
}

impl From<Streamed> for RequestBody {
    fn from(streamed: Streamed) -> Self {
        Self::Streamed(streamed)
    }
}

type Writer = dyn Fn(mpsc::Sender<Bytes>) -> BoxFuture<'static, ()> + Send + Sync;

/// A body of a known length, written by a task while it is sent.
#[derive(Clone)]
pub struct Streamed {
    len: u64,
    write: Arc<Writer>,
}

impl fmt::Debug for Streamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streamed").field("len", &self.len).finish()
    }
}

impl Streamed {
    /// A body of exactly `len` bytes, which `write` sends in pieces: it is
    /// called once per attempt, and should stop when a send fails (the
    /// attempt was abandoned).
    pub fn new<F, Fut>(len: u64, write: F) -> Self
    where
        F: Fn(mpsc::Sender<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            len,
            write: Arc::new(move |pieces| Box::pin(write(pieces))),
        }
    }

    fn open(&self) -> reqwest::Body {
        let (pieces, received) = mpsc::channel(PIECES_AHEAD);
        tokio::spawn((self.write)(pieces));
        reqwest::Body::wrap(Pieces {
            received,
            remaining: self.len,
        })
    }
}

/// The receiving end of a streamed body, held to its declared length.
struct Pieces {
    received: mpsc::Receiver<Bytes>,
    remaining: u64,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.received.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(piece)) => {
                let len = piece.len() as u64;
                if len > self.remaining {
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "the report body came out longer than its declared length",
                    ))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Poll::Ready(None) if self.remaining == 0 => Poll::Ready(None),
            Poll::Ready(None) => {
                let short = self.remaining;
                self.remaining = 0;
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the report body came out {short} bytes short of its declared length"
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;

    use super::*;

    fn writing(
        pieces: &'static [&'static str],
    ) -> impl Fn(mpsc::Sender<Bytes>) -> BoxFuture<'static, ()> {
        move |sender| {
            Box::pin(async move {
                for piece in pieces {
                    if sender
                        .send(Bytes::from_static(piece.as_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        }
    }

    async fn read(len: u64, pieces: &'static [&'static str]) -> Result<Bytes, std::io::Error> {
        let (sender, received) = mpsc::channel(PIECES_AHEAD);
        tokio::spawn(writing(pieces)(sender));
        let body = Pieces {
            received,
            remaining: len,
        };
        assert_eq!(body.size_hint().exact(), Some(len));
        body.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn pieces_make_the_declared_body() {
        let body = read(11, &["{\"a\"", ":", "[1,2]}"]).await.unwrap();
        assert_eq!(&body[..], b"{\"a\":[1,2]}");
    }

    #[tokio::test]
    async fn a_body_longer_or_shorter_than_declared_fails() {
        let long = read(3, &["ab", "cd"]).await.unwrap_err();
        assert!(long.to_string().contains("longer"), "{long}");
        let short = read(5, &["ab", "cd"]).await.unwrap_err();
        assert!(short.to_string().contains("1 bytes short"), "{short}");
    }

    #[tokio::test]
    async fn each_attempt_writes_the_body_afresh() {
        let body = RequestBody::from(Streamed::new(4, writing(&["ab", "cd"])));
        assert_eq!(body.len(), 4);
        for _ in 0..2 {
            let bytes = body.open().collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], b"abcd");
        }
    }
}
