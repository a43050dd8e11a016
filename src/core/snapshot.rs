//! The snapshot engine: pods + selection -> the exact body of Kosli's K8S report.
//!
//! Pure and deterministic: the same pods give the same bytes, and the same
//! content hash, which tells whether anything changed. The rules are the Kosli CLI's (with its
//! fixes): Running and Failed pods only; per container the digest inside imageID,
//! keyed by the status image, or by the spec image when the status image is a bare
//! ID; unusable containers skipped and pods without digests skipped, with a
//! warning, never an aborted report.
//!
//! The body is assembled, not serialised: the parts replicas share (the
//! `digests` object, the owner list) are serialised once per shared value
//! (see [`crate::core::pod`]), and each entry is those parts between the pod's
//! own name, namespace and creation time. The bytes are exactly what serde
//! would write for `{"artifacts":[{"podName","namespace","digests",
//! "creationTimestamp","owners"}…]}`, entries sorted by namespace then name.
//!
//! The content hash is a sha256 over each entry's own fields (the name by the
//! digest its record keeps) and the sha256 of its shared parts, not over the
//! body bytes: it changes exactly when the body does, at a tenth of the bytes
//! hashed (at 150,000 pods, hashing the 70 MB body would cost more than
//! assembling it). A summary ([`summarise_ordered`]) counts the body's length
//! too, so a body to send can then be written piece by piece ([`pieces`]).

use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use crate::core::fingerprint;
use crate::core::pod::{Digests, PodRecord};
use crate::core::selection::ContainerOptions;

/// A built report and what it contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The exact bytes to PUT: compact JSON (empty in a summary).
    pub body: Vec<u8>,
    /// The length of the body, written or not: a summary's body can then be
    /// sent piece by piece ([`pieces`]) under a declared Content-Length.
    pub body_len: usize,
    /// The content hash, lowercase hex: equal for equal bodies, different
    /// otherwise (see the module's documentation).
    pub hash: String,
    /// Pods in the report.
    pub pod_count: usize,
    /// Distinct fingerprints in the report.
    pub artifact_count: usize,
    /// Distinct fingerprints that are image-config IDs, not registry digests.
    pub config_id_count: usize,
    /// Containers and pods left out, and why.
    pub warnings: Vec<String>,
}

/// Builds the report of the given pods, which the caller has already selected,
/// body held whole (the one-shot `snapshot`; the reporter streams its body with
/// [`pieces`]). Pods already in (namespace, name) order are not sorted again.
pub fn build<'a>(
    pods: impl IntoIterator<Item = &'a PodRecord>,
    options: ContainerOptions,
) -> Snapshot {
    in_order(pods, |pods| assemble_into(pods, options, true))
}

/// As [`build`] without writing the body (`body` is empty): what the
/// report would contain and its content hash, to decide whether to send it
/// before paying for a body that may never be sent.
pub fn summarise<'a>(
    pods: impl IntoIterator<Item = &'a PodRecord>,
    options: ContainerOptions,
) -> Snapshot {
    in_order(pods, |pods| assemble_into(pods, options, false))
}

/// As [`summarise`], for pods the caller yields in (namespace, name) order,
/// as the reporter's store does: one pass, nothing collected or sorted.
pub fn summarise_ordered<'a>(
    pods: impl IntoIterator<Item = &'a PodRecord>,
    options: ContainerOptions,
) -> Snapshot {
    assemble_into(pods.into_iter(), options, false)
}

/// Runs `then` over `pods` in (namespace, name) order.
fn in_order<'a>(
    pods: impl IntoIterator<Item = &'a PodRecord>,
    then: impl FnOnce(std::vec::IntoIter<&'a PodRecord>) -> Snapshot,
) -> Snapshot {
    let mut pods: Vec<&PodRecord> = pods.into_iter().collect();
    let order = |p: &&PodRecord| (p.namespace.clone(), p.name.clone());
    if !pods.is_sorted_by(|a, b| (&*a.namespace, &*a.name) <= (&*b.namespace, &*b.name)) {
        pods.sort_by_cached_key(order);
    }
    then(pods.into_iter())
}

fn assemble_into<'a>(
    pods: impl Iterator<Item = &'a PodRecord>,
    options: ContainerOptions,
    write_body: bool,
) -> Snapshot {
    let mut body = Vec::new();
    if write_body {
        body.extend_from_slice(BODY_START);
    }
    let mut body_len = BODY_START.len() + BODY_END.len();
    let mut warnings = Vec::new();
    let mut counted: HashSet<*const Digests> = HashSet::new();
    let mut last_counted: *const Digests = std::ptr::null();
    let mut fingerprints: HashSet<&str> = HashSet::new();
    let mut config_ids: HashSet<&str> = HashSet::new();
    let mut pod_count = 0;
    let mut content = Sha256::new();
    content.update(CONTENT_HASH_DOMAIN);
    let mut entry = Vec::with_capacity(256);
    let mut last_namespace: Option<&str> = None;
    let mut last_parts: Option<(&[u8; 32], &[u8; 32])> = None;
    for pod in pods.filter(|p| p.is_reportable_phase()) {
        let digests = pod.containers.digests(options);
        // The same test as `reported`, with the reason why kept.
        if !digests.any {
            let reason = if digests.unusable.is_empty() {
                String::new()
            } else {
                format!(": {}", digests.unusable.join(", "))
            };
            warnings.push(format!(
                "skipping {} pod {} in namespace {} as none of its containers has a usable image ID{reason}",
                pod.phase, pod.name, pod.namespace
            ));
            continue;
        }
        if !digests.unusable.is_empty() {
            warnings.push(format!(
                "{} pod {} in namespace {} has containers without a usable image ID, reporting it without them: {}",
                pod.phase,
                pod.name,
                pod.namespace,
                digests.unusable.join(", ")
            ));
        }
        // Replicas share one `Digests`, and sit next to each other in name
        // order: their fingerprints are counted once, mostly without a lookup.
        let shared = std::ptr::from_ref(digests);
        if shared != last_counted && counted.insert(shared) {
            for (hex, config_id) in &digests.fingerprints {
                fingerprints.insert(hex);
                if *config_id {
                    config_ids.insert(hex);
                }
            }
        }
        last_counted = shared;
        pod_count += 1;
        body_len += entry_len(pod, digests, pod_count == 1);
        if write_body {
            write_entry(&mut body, pod, digests, pod_count == 1);
        }
        // Fixed lengths or lengths first, so that no two entries hash alike:
        // the fields are then read back unambiguously from the bytes hashed.
        // The name is its digest (of its length and bytes), worked out when
        // the pod was decoded, so that no name is read here. A namespace or a
        // pair of shared parts equal to the entry before is one byte (0)
        // rather than repeated (1 and the value): replicas sit side by side.
        entry.clear();
        entry.extend_from_slice(pod.name.digest());
        if last_namespace.is_some_and(|ns| *ns == *pod.namespace) {
            entry.push(0);
        } else {
            entry.push(1);
            entry.extend_from_slice(&(pod.namespace.len() as u64).to_le_bytes());
            entry.extend_from_slice(pod.namespace.as_bytes());
        }
        entry.extend_from_slice(&pod.created.unwrap_or_default().to_le_bytes());
        let parts = (&digests.sha256, pod.owners.sha256());
        if last_parts == Some(parts) {
            entry.push(0);
        } else {
            entry.push(1);
            entry.extend_from_slice(parts.0);
            entry.extend_from_slice(parts.1);
        }
        content.update(&entry);
        last_namespace = Some(&pod.namespace);
        last_parts = Some(parts);
    }
    if write_body {
        body.extend_from_slice(BODY_END);
    }

    Snapshot {
        hash: hex::encode(content.finalize()),
        body,
        body_len,
        pod_count,
        artifact_count: fingerprints.len(),
        config_id_count: config_ids.len(),
        warnings,
    }
}

/// The digests a pod is reported with; `None` for a pod left out of reports
/// (not Running or Failed, or no container with a usable image ID).
fn reported(pod: &PodRecord, options: ContainerOptions) -> Option<&Digests> {
    if !pod.is_reportable_phase() {
        return None;
    }
    Some(pod.containers.digests(options)).filter(|d| d.any)
}

/// The size of the pieces a report body is sent in: large enough that each
/// costs little to hand over, small enough to stay in the processor's cache.
pub const PIECE_LEN: usize = 128 * 1024;

/// A report's body, piece by piece, from pods in (namespace, name) order: each
/// piece at least `piece_len` bytes (the last may be shorter), together the
/// bytes [`build`] writes and as many as a summary's `body_len`.
/// A body of tens of megabytes is then never held whole, and each piece is
/// written into memory the allocator has just had back, not into fresh pages.
pub fn pieces<'a, I>(pods: I, options: ContainerOptions, piece_len: usize) -> Pieces<I>
where
    I: Iterator<Item = &'a PodRecord>,
{
    Pieces {
        pods,
        options,
        piece_len: piece_len.max(1),
        stage: Stage::Start,
    }
}

/// The iterator [`pieces`] returns.
pub struct Pieces<I> {
    pods: I,
    options: ContainerOptions,
    piece_len: usize,
    stage: Stage,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    /// Entries written so far, whether any.
    Entries {
        first: bool,
    },
    Done,
}

impl<'a, I> Iterator for Pieces<I>
where
    I: Iterator<Item = &'a PodRecord>,
{
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut first = match self.stage {
            Stage::Done => return None,
            Stage::Start => true,
            Stage::Entries { first } => first,
        };
        // Room for the last entry to overrun the piece without growing it.
        let mut piece = Vec::with_capacity(self.piece_len + self.piece_len / 4);
        if self.stage == Stage::Start {
            piece.extend_from_slice(BODY_START);
        }
        while piece.len() < self.piece_len {
            let Some(pod) = self.pods.next() else {
                piece.extend_from_slice(BODY_END);
                self.stage = Stage::Done;
                return Some(piece);
            };
            if let Some(digests) = reported(pod, self.options) {
                write_entry(&mut piece, pod, digests, first);
                first = false;
            }
        }
        self.stage = Stage::Entries { first };
        Some(piece)
    }
}

const BODY_START: &[u8] = b"{\"artifacts\":[";
const BODY_END: &[u8] = b"]}";
const ENTRY_NAME: &[u8] = b"{\"podName\":";
const ENTRY_NAMESPACE: &[u8] = b",\"namespace\":";
const ENTRY_DIGESTS: &[u8] = b",\"digests\":";
const ENTRY_CREATED: &[u8] = b",\"creationTimestamp\":";
const ENTRY_OWNERS: &[u8] = b",\"owners\":";
const ENTRY_END: &[u8] = b"}";
const ENTRY_FIXED_LEN: usize = ENTRY_NAME.len()
    + ENTRY_NAMESPACE.len()
    + ENTRY_DIGESTS.len()
    + ENTRY_CREATED.len()
    + ENTRY_OWNERS.len()
    + ENTRY_END.len();

fn write_entry(body: &mut Vec<u8>, pod: &PodRecord, digests: &Digests, first: bool) {
    if !first {
        body.push(b',');
    }
    body.extend_from_slice(ENTRY_NAME);
    write_json_string(body, &pod.name);
    body.extend_from_slice(ENTRY_NAMESPACE);
    write_json_string(body, &pod.namespace);
    body.extend_from_slice(ENTRY_DIGESTS);
    body.extend_from_slice(&digests.json);
    body.extend_from_slice(ENTRY_CREATED);
    write_integer(body, pod.created.unwrap_or_default());
    body.extend_from_slice(ENTRY_OWNERS);
    body.extend_from_slice(pod.owners.json());
    body.extend_from_slice(ENTRY_END);
}

/// The bytes [`write_entry`] writes, without writing them.
fn entry_len(pod: &PodRecord, digests: &Digests, first: bool) -> usize {
    usize::from(!first)
        + ENTRY_FIXED_LEN
        + pod.name.json_len()
        + json_string_len(&pod.namespace)
        + digests.json.len()
        + integer_len(pod.created.unwrap_or_default())
        + pod.owners.json().len()
}

/// Sets the content hash apart from any other sha256 (of a body, say).
const CONTENT_HASH_DOMAIN: &[u8] = b"kosli-operator K8S report content v3\n";

/// Writes `s` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(s) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bytes [`write_json_string`] writes for `s`.
pub(crate) fn json_string_len(s: &str) -> usize {
    if !needs_escape(s) {
        return s.len() + 2;
    }
    let escapes: usize = s
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0x00..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + 2 + escapes
}

/// Whether any byte of `s` is escaped in JSON. Names almost never have one:
/// a count without an early exit is a few vector instructions.
fn needs_escape(s: &str) -> bool {
    s.bytes()
        .filter(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .count()
        > 0
}

/// The bytes [`write_integer`] writes for `n`.
fn integer_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(n < 0)
}

fn write_integer(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// The name an artifact is reported under: the status image; when that is a
/// bare image ID (containerd reports one for an image pulled by digest), the
/// matching spec image as written, as the Kosli CLI names it; without a spec
/// image, the repository in the imageID, then whatever the status says.
pub fn artifact_name(status_image: &str, spec_image: Option<&str>, image_id: &str) -> String {
    if fingerprint::is_named(status_image) {
        return status_image.to_owned();
    }
    if let Some(image) = spec_image.filter(|image| !image.is_empty()) {
        return image.to_owned();
    }
    let trimmed = fingerprint::trim_runtime_prefix(image_id);
    if fingerprint::is_named(trimmed) {
        return trimmed.to_owned();
    }
    if !status_image.is_empty() {
        return status_image.to_owned();
    }
    trimmed.to_owned()
}

#[cfg(test)]
mod tests;
