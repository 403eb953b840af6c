//! Blob copies that survive bad networks. Every request is retried on its own; a
//! source body that breaks off is picked up with a Range GET from the byte it reached,
//! with the hash state kept, so the digest is still checked over the whole blob; an
//! upload continues from the offset the registry reports, or starts over cleanly. A
//! wrong blob is never committed: the chunk that would complete it is held back, and a
//! continued upload is committed only once the whole blob hashed to its digest.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use reqwest::header::CONTENT_RANGE;
use reqwest::{StatusCode, Url};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::digest::Hasher;
use super::registry::{receiver_stream, DigestMismatch, Registry};
use super::transport::{backoff, with_retry, Failure};
use super::Digest;

/// A body that delivers less than `STALL_BYTES` in `STALL_WINDOW` is dropped and
/// resumed, so a server dripping bytes cannot hold a copy.
const STALL_WINDOW: Duration = Duration::from_secs(30);
const STALL_BYTES: u64 = 64 << 10;
/// Failures in a row that moved no byte before a blob is given up.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 7;
/// Resumes of one blob in all, however much each moved.
const MAX_RESUMES: u32 = 100;

/// The hash over the blob so far. Bytes sent again after a resume are not hashed
/// twice; the registry checks the digest of what it holds when the upload is committed.
struct HashState {
    hasher: Option<Hasher>,
    hashed: u64,
    verdict: Option<bool>,
}

impl HashState {
    fn new(digest: &Digest, size: u64) -> HashState {
        HashState {
            hasher: Some(digest.hasher()),
            hashed: 0,
            // Nothing will flow through an empty blob to decide it.
            verdict: (size == 0).then(|| digest.matches(b"")),
        }
    }

    fn take(&mut self, position: u64, chunk: &[u8], digest: &Digest, size: u64) {
        let end = position + chunk.len() as u64;
        if end <= self.hashed {
            return;
        }
        let new = &chunk[(self.hashed - position) as usize..];
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(new);
        }
        self.hashed = end;
        if end == size {
            let actual = self.hasher.take().map(Hasher::finish);
            self.verdict = Some(actual.as_ref() == Some(digest));
        }
    }
}

enum PumpEnd {
    Complete,
    /// The upload stopped reading (its request failed).
    Dropped,
}

/// Copies blob `digest` of `size` bytes from `src` to `dst`. A commit the registry
/// refuses (it counted the bytes it holds differently) starts the upload over once.
pub async fn copy_blob(
    src: &Arc<Registry>,
    src_repository: &str,
    dst: &Registry,
    dst_repository: &str,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let what = format!(
        "copying blob {digest} ({size} bytes) from {}/{src_repository}",
        src.host
    );
    let hash = Arc::new(Mutex::new(HashState::new(digest, size)));
    let blob = Blob {
        src,
        src_repository,
        dst,
        dst_repository,
        digest,
        size,
        what: &what,
        hash: &hash,
    };
    let mut fresh_starts = 0;
    loop {
        let Some(session) = blob.upload().await? else {
            return Ok(());
        };
        if hash.lock().unwrap().verdict != Some(true) {
            dst.cancel_upload(dst_repository, &session).await;
            return Err(anyhow!(DigestMismatch {
                what: format!("blob {digest} of {}/{src_repository}", src.host),
            }));
        }
        let committed = with_retry(&what, &dst.stats, || {
            dst.commit_upload(dst_repository, &session, digest, None)
        })
        .await;
        let Err(e) = committed else { return Ok(()) };
        // A commit whose answer was lost may still have landed.
        if dst.has_blob(dst_repository, digest.as_str()).await? {
            return Ok(());
        }
        fresh_starts += 1;
        if fresh_starts > 1 {
            return Err(e);
        }
        dst.stats.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

struct Blob<'a> {
    src: &'a Arc<Registry>,
    src_repository: &'a str,
    dst: &'a Registry,
    dst_repository: &'a str,
    digest: &'a Digest,
    size: u64,
    what: &'a str,
    hash: &'a Arc<Mutex<HashState>>,
}

impl Blob<'_> {
    /// Sends every byte into a new upload session, resuming it after failures; the
    /// session, ready to commit, or None when the upload already committed.
    async fn upload(&self) -> Result<Option<Url>> {
        let Blob {
            src,
            src_repository,
            dst,
            dst_repository,
            digest,
            size,
            what,
            hash,
        } = *self;
        let stats = dst.stats.clone();
        let start = || async {
            with_retry(
                &format!("starting an upload to {}/{dst_repository}", dst.host),
                &stats,
                || dst.start_upload(dst_repository),
            )
            .await
        };
        let mut session = start().await?;
        let mut offset = 0;
        let (mut stuck, mut resumes) = (0, 0);
        while offset < size {
            let (sender, receiver) = mpsc::channel(1);
            let pump = tokio::spawn(pump_source(
                src.clone(),
                src_repository.to_string(),
                digest.clone(),
                size,
                offset,
                hash.clone(),
                sender,
            ));
            let body = reqwest::Body::wrap_stream(receiver_stream(receiver));
            // The first try is one PUT that uploads and commits (one request fewer on a
            // good network); the reader fails it before the last byte if the digest is
            // wrong. After a failure, the session is continued with PATCH.
            let monolithic = offset == 0 && resumes == 0;
            let patched = if monolithic {
                dst.commit_upload(dst_repository, &session, digest, Some((size, body)))
                    .await
                    .map(|()| None)
            } else {
                dst.patch_upload(dst_repository, &session, offset, size - offset, body)
                    .await
                    .map(Some)
            };
            // After a failed upload request the reader may still be retrying its source;
            // a reader that failed for good has already finished.
            let mut pump = pump;
            let pumped = match &patched {
                Ok(_) => Some((&mut pump).await),
                Err(_) => tokio::time::timeout(Duration::from_millis(200), &mut pump)
                    .await
                    .ok(),
            };
            let pumped = match pumped {
                Some(joined) => joined.map_err(|e| anyhow!("{what}: the reader stopped: {e}"))?,
                None => {
                    pump.abort();
                    Ok(PumpEnd::Dropped)
                }
            };
            let failure = match (patched, pumped) {
                (_, Err(failure)) => {
                    // The source failed for good: no point asking the destination more.
                    dst.cancel_upload(dst_repository, &session).await;
                    return Err(failure.error.context(what.to_string()));
                }
                (Ok(None), Ok(PumpEnd::Complete)) => return Ok(None),
                (Ok(Some(next)), Ok(PumpEnd::Complete)) => {
                    session = next;
                    break;
                }
                (Ok(_), Ok(PumpEnd::Dropped)) => {
                    Failure::transient(anyhow!("{what}: the upload ended early"), None)
                }
                (Err(failure), _) => failure,
            };
            if !failure.retryable {
                dst.cancel_upload(dst_repository, &session).await;
                return Err(failure.error.context(what.to_string()));
            }
            resumes += 1;
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(stuck.min(5) + 1, failure.retry_after)).await;
            let before = offset;
            let asked = with_retry(what, &stats, || dst.upload_offset(dst_repository, &session));
            match asked.await? {
                Some((next, held)) if held <= offset.max(hash.lock().unwrap().hashed) => {
                    stats.resumed_uploads.fetch_add(1, Ordering::Relaxed);
                    (session, offset) = (next, held);
                }
                _ => {
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                    session = start().await?;
                    offset = 0;
                }
            }
            stuck = if offset > before { 0 } else { stuck + 1 };
            if stuck >= MAX_FAILURES_WITHOUT_PROGRESS || resumes >= MAX_RESUMES {
                return Err(failure
                    .error
                    .context(format!("{what} (gave up after {resumes} resumes)")));
            }
        }
        Ok(Some(session))
    }
}

/// A blob's bytes, resumed with Range GETs when the body breaks off or stalls, and
/// checked against its digest and size: a mismatch is the stream's last item, an error.
pub fn read_blob(
    src: Arc<Registry>,
    repository: &str,
    digest: &Digest,
    size: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(1);
    let hash = Arc::new(Mutex::new(HashState::new(digest, size)));
    tokio::spawn(pump_source(
        src,
        repository.to_string(),
        digest.clone(),
        size,
        0,
        hash,
        sender,
    ));
    receiver_stream(receiver)
}

/// Streams the source blob from `from` into `sender`, resuming with Range GETs when the
/// body breaks off or stalls, and hashing every byte once.
async fn pump_source(
    src: Arc<Registry>,
    repository: String,
    digest: Digest,
    size: u64,
    from: u64,
    hash: Arc<Mutex<HashState>>,
    sender: mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
) -> std::result::Result<PumpEnd, Failure> {
    let what = format!("blob {digest} of {}/{repository}", src.host);
    let stats = src.stats.clone();
    let mut position = from;
    let (mut stuck, mut resumes) = (0, 0);
    let fail = |failure: Failure| {
        let sender = sender.clone();
        async move {
            let _ = sender
                .send(Err(std::io::Error::other(failure.error.to_string())))
                .await;
            Err(failure)
        }
    };
    while position < size {
        let opened = with_retry(&format!("GET {what}"), &stats, || {
            src.get_blob_from(&repository, digest.as_str(), position)
        })
        .await;
        let response = match opened {
            Ok(response) => response,
            Err(e) => return fail(Failure::fatal(e)).await,
        };
        let before = position;
        let Some(mut skip) = skip_for(&response, position) else {
            // A range that starts past the byte asked for is of no use; ask again.
            stuck += 1;
            if stuck >= MAX_FAILURES_WITHOUT_PROGRESS {
                let error = anyhow!("{what}: the source keeps answering other ranges than asked");
                return fail(Failure::fatal(error)).await;
            }
            continue;
        };
        if skip > 0 && response.status() != StatusCode::PARTIAL_CONTENT {
            stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let mut body = response.bytes_stream();
        // Time spent waiting on the source, and bytes it gave, in this window; time
        // spent waiting on the destination does not count against the source.
        let (mut waited, mut given) = (Duration::ZERO, 0u64);
        loop {
            let next = body.next();
            tokio::pin!(next);
            // Most chunks are already buffered: no timer for those.
            let item = match (&mut next).now_or_never() {
                Some(item) => Some(item),
                None => {
                    let started = Instant::now();
                    let item = tokio::time::timeout(STALL_WINDOW - waited, next).await.ok();
                    waited += started.elapsed();
                    if item.is_none() && given >= STALL_BYTES {
                        // Quiet now, but the window as a whole moved enough.
                        (waited, given) = (Duration::ZERO, 0);
                        continue;
                    }
                    item
                }
            };
            let chunk = match item {
                Some(Some(Ok(chunk))) => chunk,
                // Broke off, ended short, or went quiet: resume from `position`.
                Some(Some(Err(_)) | None) | None => break,
            };
            let mut chunk = chunk;
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                chunk = chunk.slice(dropped as usize..);
                skip -= dropped;
            }
            if position + chunk.len() as u64 > size {
                let error = anyhow!("{what}: more than the {size} bytes the manifest declares");
                return fail(Failure::fatal(error)).await;
            }
            let verdict = {
                let mut hash = hash.lock().unwrap();
                hash.take(position, &chunk, &digest, size);
                hash.verdict
            };
            // Held back: the chunk that would complete a wrong blob is never sent.
            if verdict == Some(false) {
                return fail(Failure::fatal(anyhow!(DigestMismatch { what }))).await;
            }
            position += chunk.len() as u64;
            stats
                .bytes_copied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            given += chunk.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return Ok(PumpEnd::Dropped);
            }
            if waited >= STALL_WINDOW {
                if given < STALL_BYTES {
                    break;
                }
                (waited, given) = (Duration::ZERO, 0);
            }
        }
        if position < size {
            resumes += 1;
            stuck = if position > before { 0 } else { stuck + 1 };
            if stuck >= MAX_FAILURES_WITHOUT_PROGRESS || resumes >= MAX_RESUMES {
                let error = anyhow!(
                    "{what}: the source kept breaking off at byte {position} of {size} ({resumes} resumes)"
                );
                return fail(Failure::fatal(error)).await;
            }
            stats.resumed_reads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(stuck + 1, None)).await;
        }
    }
    if hash.lock().unwrap().verdict == Some(false) {
        let error = anyhow!(DigestMismatch { what });
        return fail(Failure::fatal(error)).await;
    }
    Ok(PumpEnd::Complete)
}

/// Bytes to drop from the front of a response to reach `position`: what a 206 holds
/// before it, or `position` when the registry ignored Range and sent the whole blob.
/// None for a range that starts after `position` or cannot be read.
fn skip_for(response: &reqwest::Response, position: u64) -> Option<u64> {
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Some(position);
    }
    let start = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim_start_matches("bytes ")
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()
        })?;
    position.checked_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sent_again_are_hashed_once() {
        let data = b"hello world";
        let digest = Digest::of_sha256(data);
        let mut state = HashState {
            hasher: Some(digest.hasher()),
            hashed: 0,
            verdict: None,
        };
        state.take(0, b"hello ", &digest, 11);
        // A resume from byte 3 sends "lo " again, then the rest.
        state.take(3, b"lo wor", &digest, 11);
        state.take(9, b"ld", &digest, 11);
        assert_eq!(state.verdict, Some(true));
        let mut bad = HashState {
            hasher: Some(digest.hasher()),
            hashed: 0,
            verdict: None,
        };
        bad.take(0, b"hello_world", &digest, 11);
        assert_eq!(bad.verdict, Some(false));
    }
}
