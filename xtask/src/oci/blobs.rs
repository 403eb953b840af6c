//! Blob copies that survive bad networks. Every request is retried on its own; a
//! source body that breaks off is picked up with a Range GET from the byte it reached,
//! with the hash state kept, so the digest is still checked over the whole blob; an
//! upload continues from the offset the registry reports, or starts over cleanly. A
//! wrong blob is never committed: the chunk that would complete it is held back, and a
//! continued upload is committed only once the whole blob hashed to its digest.

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use reqwest::header::CONTENT_RANGE;
use reqwest::{StatusCode, Url};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::digest::Hasher;
use super::error::{Error, Result};
use super::name::{Digest, Repository};
use super::registry::{receiver_stream, Client};
use super::transport::{backoff, with_retry};

/// A body that delivers less than `STALL_BYTES` in `STALL_WINDOW` is dropped and
/// resumed, so a server dripping bytes cannot hold a copy.
const STALL_WINDOW: Duration = Duration::from_secs(30);
const STALL_BYTES: u64 = 64 << 10;
/// Failures in a row that moved no byte before a blob is given up.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 7;
/// Resumes of one blob in all, however much each moved.
const MAX_RESUMES: u32 = 100;

/// The one check on blob bytes, for copies, `save`, `load` and `size`: hashes with the
/// digest's own algorithm, counts against the declared size, and decides at the last
/// byte, so the caller can hold back the chunk that would complete a wrong blob. Bytes
/// sent again after a resume are not hashed twice.
pub struct Verifier {
    digest: Digest,
    size: u64,
    what: String,
    hasher: Option<Hasher>,
    hashed: u64,
    verdict: Option<bool>,
}

impl Verifier {
    pub fn new(digest: &Digest, size: u64, what: impl Into<String>) -> Verifier {
        Verifier {
            digest: digest.clone(),
            size,
            what: what.into(),
            hasher: Some(digest.hasher()),
            hashed: 0,
            // Nothing will flow through an empty blob to decide it.
            verdict: (size == 0).then(|| digest.matches(b"")),
        }
    }

    /// Takes `chunk`, found at `position` of the blob. An error means the chunk must not
    /// be passed on: it runs past the declared size, or completes other content.
    pub fn take(&mut self, position: u64, chunk: &[u8]) -> Result<()> {
        let end = position + chunk.len() as u64;
        if end > self.size {
            return Err(Error::SizeMismatch {
                what: self.what.clone(),
                detail: format!("more than the {} bytes the manifest declares", self.size),
            });
        }
        if end <= self.hashed {
            return Ok(());
        }
        let new = &chunk[(self.hashed.max(position) - position) as usize..];
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(new);
        }
        self.hashed = end;
        if end == self.size {
            let actual = self.hasher.take().map(Hasher::finish);
            self.verdict = Some(actual.as_ref() == Some(&self.digest));
        }
        match self.verdict {
            Some(false) => Err(self.mismatch()),
            _ => Ok(()),
        }
    }

    /// Bytes hashed so far, from the start of the blob.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// After the last chunk: whether the whole blob arrived and matches its digest.
    pub fn finish(&self) -> Result<()> {
        match self.verdict {
            Some(true) => Ok(()),
            Some(false) => Err(self.mismatch()),
            None => Err(Error::SizeMismatch {
                what: self.what.clone(),
                detail: format!("got {} of {} bytes", self.hashed, self.size),
            }),
        }
    }

    fn mismatch(&self) -> Error {
        Error::DigestMismatch {
            what: self.what.clone(),
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
    src: &Arc<Client>,
    src_repository: &Repository,
    dst: &Client,
    dst_repository: &Repository,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let what = format!(
        "copying blob {digest} ({size} bytes) from {}/{src_repository}",
        src.host
    );
    let verifier = Arc::new(Mutex::new(Verifier::new(
        digest,
        size,
        format!("blob {digest} of {}/{src_repository}", src.host),
    )));
    let blob = Blob {
        src,
        src_repository,
        dst,
        dst_repository,
        digest,
        size,
        what: &what,
        verifier: &verifier,
    };
    let mut fresh_starts = 0;
    loop {
        let Some(session) = blob.upload().await? else {
            return Ok(());
        };
        let verdict = verifier.lock().unwrap().finish();
        if let Err(mismatch) = verdict {
            dst.cancel_upload(dst_repository, &session).await;
            return Err(mismatch);
        }
        let committed = with_retry(&what, &dst.stats, || {
            dst.commit_upload(dst_repository, &session, digest, None)
        })
        .await;
        let Err(e) = committed else { return Ok(()) };
        // A commit whose answer was lost may still have landed.
        if dst.has_blob(dst_repository, digest).await? {
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
    src: &'a Arc<Client>,
    src_repository: &'a Repository,
    dst: &'a Client,
    dst_repository: &'a Repository,
    digest: &'a Digest,
    size: u64,
    what: &'a str,
    verifier: &'a Arc<Mutex<Verifier>>,
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
            verifier,
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
                src_repository.clone(),
                digest.clone(),
                size,
                offset,
                verifier.clone(),
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
            let pumped = reader_end(pump, patched.is_ok(), what).await?;
            let failure = match (patched, pumped) {
                (_, Err(failure)) => {
                    // The source failed for good: no point asking the destination more.
                    dst.cancel_upload(dst_repository, &session).await;
                    return Err(failure.context(what));
                }
                (Ok(None), Ok(PumpEnd::Complete)) => return Ok(None),
                (Ok(Some(next)), Ok(PumpEnd::Complete)) => {
                    session = next;
                    break;
                }
                (Ok(_), Ok(PumpEnd::Dropped)) => {
                    Error::transient(format!("{what}: the upload ended early"))
                }
                (Err(failure), _) => failure,
            };
            if !failure.is_retryable() {
                dst.cancel_upload(dst_repository, &session).await;
                return Err(failure.context(what));
            }
            resumes += 1;
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(stuck.min(5) + 1, failure.retry_after())).await;
            let before = offset;
            let asked = with_retry(what, &stats, || dst.upload_offset(dst_repository, &session));
            match asked.await? {
                Some((next, held)) if held <= offset.max(verifier.lock().unwrap().hashed()) => {
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
                return Err(failure.context(format!("{what} (gave up after {resumes} resumes)")));
            }
        }
        Ok(Some(session))
    }
}

/// A blob's bytes, resumed with Range GETs when the body breaks off or stalls, and
/// checked by a `Verifier`: a mismatch is the stream's last item, an error, in place
/// of the chunk that would have completed the wrong blob.
pub fn read_blob(
    src: Arc<Client>,
    repository: &Repository,
    digest: &Digest,
    size: u64,
) -> impl Stream<Item = Result<Bytes>> + Send + Sync + 'static {
    let (sender, receiver) = mpsc::channel(1);
    let verifier = Verifier::new(
        digest,
        size,
        format!("blob {digest} of {}/{repository}", src.host),
    );
    tokio::spawn(pump_source(
        src,
        repository.clone(),
        digest.clone(),
        size,
        0,
        Arc::new(Mutex::new(verifier)),
        sender,
    ));
    receiver_stream(receiver)
}

/// Uploads `size` bytes of untrusted content (a bundle's blob) as blob `digest`,
/// checked by a `Verifier` on the way: the chunk that would complete a wrong blob is
/// held back, so the upload never commits and nothing is pushed.
pub async fn upload_verified(
    dst: &Client,
    repository: &Repository,
    digest: &Digest,
    size: u64,
    chunks: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    what: String,
) -> Result<()> {
    let refused: Arc<Mutex<Option<Error>>> = Arc::default();
    let (sender, receiver) = mpsc::channel::<Result<Bytes>>(1);
    let verdict = refused.clone();
    let expected = digest.clone();
    let pump = tokio::spawn(async move {
        let mut verifier = Verifier::new(&expected, size, what.clone());
        let mut chunks = chunks;
        let mut position = 0;
        // The upload gets the error's text and fails; the caller gets the error itself.
        let refuse = |error: Error| {
            let text = Error::Refused(error.to_string());
            *verdict.lock().unwrap() = Some(error);
            text
        };
        while let Some(item) = chunks.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = sender
                        .send(Err(Error::Refused(format!("{what}: {e}"))))
                        .await;
                    return;
                }
            };
            if let Err(error) = verifier.take(position, &chunk) {
                let _ = sender.send(Err(refuse(error))).await;
                return;
            }
            position += chunk.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if let Err(error) = verifier.finish() {
            let _ = sender.send(Err(refuse(error))).await;
        }
    });
    let result = dst
        .put_blob_stream(repository, digest, size, receiver_stream(receiver))
        .await;
    pump.abort();
    if let Some(error) = refused.lock().unwrap().take() {
        return Err(error);
    }
    result
}

/// How the reader of one upload attempt ended. After a failed upload request it may
/// still be retrying its source; a reader that failed for good has already finished.
async fn reader_end(
    mut pump: tokio::task::JoinHandle<Result<PumpEnd>>,
    upload_ok: bool,
    what: &str,
) -> Result<Result<PumpEnd>> {
    let pumped = if upload_ok {
        Some((&mut pump).await)
    } else {
        tokio::time::timeout(Duration::from_millis(200), &mut pump)
            .await
            .ok()
    };
    match pumped {
        Some(joined) => {
            joined.map_err(|e| Error::Refused(format!("{what}: the reader stopped: {e}")))
        }
        None => {
            pump.abort();
            Ok(Ok(PumpEnd::Dropped))
        }
    }
}

/// Time spent waiting on the source, and bytes it gave, in the current stall window;
/// time spent waiting on the destination does not count against the source.
#[derive(Default)]
struct Window {
    waited: Duration,
    given: u64,
}

impl Window {
    /// The next item of `body`; None once the source went quiet for the rest of the
    /// window without having moved `STALL_BYTES` in it.
    async fn next<S: futures_util::Stream + Unpin>(
        &mut self,
        body: &mut S,
    ) -> Option<Option<S::Item>> {
        loop {
            let next = body.next();
            tokio::pin!(next);
            // Most chunks are already buffered: no timer for those.
            if let Some(item) = (&mut next).now_or_never() {
                return Some(item);
            }
            let started = Instant::now();
            let item = tokio::time::timeout(STALL_WINDOW - self.waited, next)
                .await
                .ok();
            self.waited += started.elapsed();
            if item.is_none() && self.given >= STALL_BYTES {
                // Quiet now, but the window as a whole moved enough.
                *self = Window::default();
                continue;
            }
            return item;
        }
    }
}

/// Streams the source blob from `from` into `sender`, resuming with Range GETs when the
/// body breaks off or stalls, every byte through `verifier` before it is sent.
async fn pump_source(
    src: Arc<Client>,
    repository: Repository,
    digest: Digest,
    size: u64,
    from: u64,
    verifier: Arc<Mutex<Verifier>>,
    sender: mpsc::Sender<Result<Bytes>>,
) -> Result<PumpEnd> {
    let what = format!("blob {digest} of {}/{repository}", src.host);
    let stats = src.stats.clone();
    let mut position = from;
    let (mut stuck, mut resumes) = (0, 0);
    // The reader of `sender` gets the error's text; the caller gets the error itself.
    let fail = |error: Error| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(Err(Error::Refused(error.to_string()))).await;
            Err(error)
        }
    };
    while position < size {
        let opened = with_retry(&format!("GET {what}"), &stats, || {
            src.get_blob_from(&repository, &digest, position)
        })
        .await;
        let response = match opened {
            Ok(response) => response,
            Err(e) => return fail(e).await,
        };
        let before = position;
        let Some(mut skip) = skip_for(&response, position) else {
            // A range that starts past the byte asked for is of no use; ask again.
            stuck += 1;
            if stuck >= MAX_FAILURES_WITHOUT_PROGRESS {
                let error = Error::Refused(format!(
                    "{what}: the source keeps answering other ranges than asked"
                ));
                return fail(error).await;
            }
            continue;
        };
        if skip > 0 && response.status() != StatusCode::PARTIAL_CONTENT {
            stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let mut body = response.bytes_stream();
        let mut window = Window::default();
        loop {
            let chunk = match window.next(&mut body).await {
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
            // Held back: the chunk that would complete a wrong blob is never sent.
            let checked = verifier.lock().unwrap().take(position, &chunk);
            if let Err(error) = checked {
                return fail(error).await;
            }
            position += chunk.len() as u64;
            stats
                .bytes_copied
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            window.given += chunk.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return Ok(PumpEnd::Dropped);
            }
            if window.waited >= STALL_WINDOW {
                if window.given < STALL_BYTES {
                    break;
                }
                window = Window::default();
            }
        }
        if position < size {
            resumes += 1;
            stuck = if position > before { 0 } else { stuck + 1 };
            if stuck >= MAX_FAILURES_WITHOUT_PROGRESS || resumes >= MAX_RESUMES {
                let error = Error::Refused(format!(
                    "{what}: the source kept breaking off at byte {position} of {size} ({resumes} resumes)"
                ));
                return fail(error).await;
            }
            stats.resumed_reads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(stuck + 1, None)).await;
        }
    }
    let verdict = verifier.lock().unwrap().finish();
    if let Err(error) = verdict {
        return fail(error).await;
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
        let mut verifier = Verifier::new(&digest, 11, "blob");
        verifier.take(0, b"hello ").unwrap();
        // A resume from byte 3 sends "lo " again, then the rest.
        verifier.take(3, b"lo wor").unwrap();
        verifier.take(9, b"ld").unwrap();
        assert!(verifier.finish().is_ok());
    }

    #[test]
    fn the_chunk_that_completes_a_wrong_blob_is_refused() {
        let digest = Digest::of_sha256(b"hello world");
        let mut verifier = Verifier::new(&digest, 11, "blob x");
        verifier.take(0, b"hello ").unwrap();
        let refused = verifier.take(6, b"w0rld").unwrap_err();
        assert!(refused.is_digest_mismatch(), "{refused}");
        let mut long = Verifier::new(&digest, 11, "blob x");
        let past = long.take(0, b"hello world!").unwrap_err();
        assert!(
            past.to_string().contains("more than the 11 bytes"),
            "{past}"
        );
        let mut short = Verifier::new(&digest, 11, "blob x");
        short.take(0, b"hello").unwrap();
        assert_eq!(
            short.finish().unwrap_err().to_string(),
            "blob x: got 5 of 11 bytes"
        );
    }

    #[test]
    fn sha512_blobs_are_hashed_with_sha512() {
        use sha2::Digest as _;
        let data = b"sha512 content";
        let digest = Digest::parse(&format!(
            "sha512:{}",
            hex::encode(sha2::Sha512::digest(data))
        ))
        .unwrap();
        let mut verifier = Verifier::new(&digest, data.len() as u64, "blob");
        verifier.take(0, &data[..4]).unwrap();
        verifier.take(4, &data[4..]).unwrap();
        assert!(verifier.finish().is_ok());
        let mut other = Verifier::new(&digest, data.len() as u64, "blob");
        assert!(other
            .take(0, b"sha512 c0ntent")
            .unwrap_err()
            .is_digest_mismatch());
    }
}
