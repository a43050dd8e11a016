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
    mut response: reqwest::Response,
    what: &'static str,
    limit: u64,
) -> Result<Bytes> {
    let declared = response.content_length();
    if let Some(declared) = declared
        && declared > limit
    {
        return Err(Error::BodyTooLarge {
            what,
            limit,
            declared: Some(declared),
        });
    }
    let capacity = declared.unwrap_or(0).min(INITIAL_CAPACITY).min(limit);
    let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| Error::BodyRead { what, source })?
    {
        let total = (body.len() as u64).saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(Error::BodyTooLarge {
                what,
                limit,
                declared: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
