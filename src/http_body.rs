//! Reading an HTTP answer's body with a cap.
//!
//! Whoever writes a pod spec picks the registry the gate talks to, so a body
//! that never ends must not be able to run the operator out of memory (and take
//! the reporter down with it). Bodies are read chunk by chunk and cut at the
//! limit; a declared Content-Length over it is refused before anything is read.

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// What is reserved up front: a declared length is the sender's word, and
/// thousands of lookups at once must not each reserve the full limit.
const INITIAL_CAPACITY: u64 = 64 * KIB;

/// The whole body of `response`, or `Error::BodyTooLarge` once it passes
/// `limit` bytes. `what` names the body in errors ("the manifest").
pub async fn read_capped(
    response: reqwest::Response,
    what: &'static str,
    limit: u64,
) -> Result<Bytes> {
    let declared = response.content_length();
    let capacity = declared.unwrap_or(0).min(INITIAL_CAPACITY).min(limit);
    let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    each_chunk_capped(response, what, limit, |chunk| body.extend_from_slice(chunk)).await?;
    Ok(body.freeze())
}

/// The sha256 of the body of `response`, hashed as it streams in: only the
/// digest is needed, so no lookup holds a whole body, however many run at once.
pub async fn sha256_capped(
    response: reqwest::Response,
    what: &'static str,
    limit: u64,
) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    each_chunk_capped(response, what, limit, |chunk| hasher.update(chunk)).await?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds the body of `response` to `take`, chunk by chunk, refusing a
/// declared length over `limit` before reading and stopping once it passes.
async fn each_chunk_capped(
    mut response: reqwest::Response,
    what: &'static str,
    limit: u64,
    mut take: impl FnMut(&[u8]),
) -> Result<()> {
    if let Some(declared) = response.content_length()
        && declared > limit
    {
        return Err(Error::BodyTooLarge {
            what,
            limit,
            declared: Some(declared),
        });
    }
    let mut total: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| Error::BodyRead { what, source })?
    {
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(Error::BodyTooLarge {
                what,
                limit,
                declared: None,
            });
        }
        take(&chunk);
    }
    Ok(())
}
