//! The transport under the registry client: which HTTP client a URL gets (verified TLS
//! unless the host is loopback or named insecure), redirects followed by hand so
//! credentials stay with their origin, per-request retries with backoff, every request
//! within its host's budget (`limits`), bounded reads, and error text that never carries
//! a URL or a control character.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{StatusCode, Url};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::error::{Error, NetworkCause, Result};
use super::limits::{authority, HostLimits};
use super::name::is_loopback;
use crate::text::printable;

const MAX_ATTEMPTS: u32 = 7;
const MAX_REDIRECTS: usize = 5;
/// Whole-request deadline for everything but blob bodies, so a server that drips a
/// manifest or a token one byte at a time cannot hold a run.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(60);
/// An error body is only read for its message; more than this is dropped unread.
const MAX_ERROR_BODY: u64 = 64 << 10;

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        // Connection resets, timeouts and truncated bodies are worth another try.
        let retryable =
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode();
        Error::Network {
            detail: describe_reqwest(&e),
            retryable,
            cause: cause_of(&e),
        }
    }
}

/// Reads the cause from the error's types: rustls and io errors sit under hyper's.
fn cause_of(e: &reqwest::Error) -> NetworkCause {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return NetworkCause::Tls;
        }
        source = match s.downcast_ref::<std::io::Error>() {
            Some(io) => {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return NetworkCause::Refused,
                    std::io::ErrorKind::TimedOut => return NetworkCause::TimedOut,
                    _ => {}
                }
                // io::Error::source skips the error it wraps; nested ones hide rustls's.
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => s.source(),
        };
    }
    if e.is_timeout() {
        NetworkCause::TimedOut
    } else {
        NetworkCause::Other
    }
}

/// A reqwest error without its URL (which can be a presigned CDN link or an upload's
/// session state), its causes made printable.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the body broke off"
    } else if e.is_redirect() {
        "too many redirects"
    } else {
        "the request failed"
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&printable(&s.to_string()));
        source = s.source();
    }
    text
}

/// Counters for the summary and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_copied: AtomicU64,
    /// Source bodies picked up again with a Range GET after they broke off.
    pub resumed_reads: AtomicU64,
    /// Uploads continued from the offset the registry reported.
    pub resumed_uploads: AtomicU64,
    /// Blobs started over: the source ignored Range, or the upload session was lost.
    pub restarts: AtomicU64,
}

/// Runs `op` until it succeeds, fails for good, or runs out of attempts. Waits with
/// exponential backoff and jitter, or as long as the server's `Retry-After` says.
pub async fn with_retry<T, F, Fut>(what: &str, stats: &Stats, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt < MAX_ATTEMPTS => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = backoff(attempt, error.retry_after());
                if std::env::var_os("XTASK_MIRROR_DEBUG").is_some() {
                    eprintln!("retry {attempt} of {what} in {wait:?}: {error}");
                }
                tokio::time::sleep(wait).await;
            }
            Err(error) if attempt > 1 => {
                return Err(Error::Context {
                    context: format!("{what} (gave up after {attempt} attempts)"),
                    source: Box::new(error),
                })
            }
            // Most errors already start with `what`; saying it twice helps nobody.
            Err(error) => return Err(error.context(what)),
        }
    }
}

/// The longest wait a server's `Retry-After` gets.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter, or the server's `Retry-After`, capped at a minute.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(7)));
    retry_after
        .unwrap_or_else(|| backoff.mul_f64(0.5 + fastrand::f64()))
        .min(MAX_WAIT)
}

/// (scheme, host, port): what must match for credentials to go along.
pub fn origin(url: &Url) -> (String, String, u16) {
    (
        url.scheme().to_string(),
        url.host_str().unwrap_or("").to_string(),
        url.port_or_known_default().unwrap_or(0),
    )
}

/// Two clients, chosen per URL: the relaxed one (no TLS verification) only ever talks to
/// loopback and the hosts the user named, whatever a registry redirects to.
pub struct Transport {
    verified: reqwest::Client,
    relaxed: reqwest::Client,
    insecure: Vec<String>,
    limits: Arc<HostLimits>,
}

impl Transport {
    pub fn new(insecure: &[String], limits: Arc<HostLimits>) -> Result<Transport> {
        let build = |relaxed: bool| {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(relaxed)
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(32)
                .user_agent(concat!("kubeopencode-xtask/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| {
                    Error::Refused(format!(
                        "building the HTTP client: {}",
                        describe_reqwest(&e)
                    ))
                })
        };
        Ok(Transport {
            verified: build(false)?,
            relaxed: build(true)?,
            insecure: insecure.to_vec(),
            limits,
        })
    }

    /// Sends a request built on `client_for` its URL, within its host's budget: it waits
    /// for a slot and its start time, and holds the slot until the answer's head came
    /// (a body streams under `--jobs`). Every try and every redirect hop comes through
    /// here, so each counts.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let (client, request) = request.build_split();
        let request = request?;
        let Some(limiter) = self.limits.limiter_for(request.url()) else {
            return Ok(client.execute(request).await?);
        };
        // An upload streaming a download is answered only after that download ends; held,
        // its slot could be the one the download of the same host waits for.
        let streams = request.body().is_some_and(|body| body.as_bytes().is_none());
        let _slot = limiter.admit().await.filter(|_| !streams);
        let response = client.execute(request).await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            if let Some(wait) = wait {
                limiter.hold_off(wait.min(MAX_WAIT));
            }
        }
        Ok(response)
    }

    /// Whether `url`'s host may skip TLS verification and speak plain HTTP.
    pub fn is_relaxed(&self, url: &Url) -> bool {
        let authority = authority(url);
        // `--insecure host:443` names the same host as `https://host/`.
        let with_port = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        is_loopback(&authority)
            || self.insecure.contains(&authority)
            || self.insecure.contains(&with_port)
    }

    pub fn client_for(&self, url: &Url) -> &reqwest::Client {
        if self.is_relaxed(url) {
            &self.relaxed
        } else {
            &self.verified
        }
    }

    /// Checks a URL a registry handed us (a redirect, an upload location, a token realm)
    /// before anything is sent to it: http(s) only, no user info, and no step down from
    /// HTTPS to plain HTTP except to a relaxed host.
    pub fn check_handed_url(&self, from: &Url, to: &Url, what: &str) -> Result<()> {
        let refuse = |why: &str| {
            Error::Refused(format!(
                "{what}: the registry pointed to {}, {why}; refusing it",
                printable(&format!(
                    "{}://{}",
                    to.scheme(),
                    to.host_str().unwrap_or("")
                ))
            ))
        };
        match to.scheme() {
            "https" => {}
            "http" if from.scheme() == "http" || self.is_relaxed(to) => {}
            "http" => return Err(refuse("which would drop from HTTPS to plain HTTP")),
            _ => return Err(refuse("which is not HTTP")),
        }
        if !to.username().is_empty() || to.password().is_some() {
            return Err(refuse("a URL with credentials in it"));
        }
        if to.host_str().is_none_or(str::is_empty) {
            return Err(refuse("a URL without a host"));
        }
        Ok(())
    }

    /// Where a 3xx points, checked; None when the response is not a redirect.
    pub fn redirect_target(
        &self,
        from: &Url,
        response: &reqwest::Response,
        what: &str,
        hops: usize,
    ) -> Result<Option<Url>> {
        if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if hops >= MAX_REDIRECTS {
            return Err(Error::Refused(format!(
                "{what}: more than {MAX_REDIRECTS} redirects"
            )));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Refused(format!("{what}: a redirect without a Location")))?;
        let to = from
            .join(location)
            .map_err(|_| Error::Refused(format!("{what}: a redirect to an unreadable URL")))?;
        self.check_handed_url(from, &to, what)?;
        Ok(Some(to))
    }
}

/// An error from an HTTP status; `Error::is_retryable` says 429, 408 and 5xx are transient.
pub fn status_failure(what: String, status: StatusCode, headers: &HeaderMap, body: &str) -> Error {
    let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        "; check the credentials in your Docker config (docker login)"
    } else {
        ""
    };
    Error::Status {
        what,
        status,
        detail: registry_error_detail(body),
        hint,
        retry_after: headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after),
    }
}

/// A failure from a response's status, reading at most 64 KiB of its body for the
/// registry's own error message.
pub async fn failure_from(what: String, response: reqwest::Response) -> Error {
    let status = response.status();
    let headers = response.headers().clone();
    let body = error_body(response, &what).await;
    status_failure(what, status, &headers, &body)
}

/// An error answer's body, bounded; empty when it cannot be read.
pub async fn error_body(response: reqwest::Response, what: &str) -> String {
    read_bounded(response, MAX_ERROR_BODY, what, true)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn registry_error_detail(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let messages: Vec<String> = json["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .take(3)
                .map(|e| {
                    printable(
                        format!(
                            "{} {}",
                            e["code"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                        .trim(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        String::new()
    } else {
        format!(" ({})", messages.join("; "))
    }
}

pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The body, refused as soon as it passes `limit` bytes, so a hostile server cannot
/// make us hold more than that. With `truncate`, the first `limit` bytes are kept and
/// the rest dropped unread instead.
pub async fn read_bounded(
    response: reqwest::Response,
    limit: u64,
    what: &str,
    truncate: bool,
) -> Result<Bytes> {
    let too_large = || {
        Error::Refused(format!(
            "{what}: the body is larger than the {limit}-byte limit; refusing it"
        ))
    };
    if !truncate && response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut body = response.bytes_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            if truncate {
                let room = limit as usize - out.len();
                out.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn registry_errors_are_summarised_and_made_printable() {
        let body =
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        assert_eq!(
            registry_error_detail(body),
            " (MANIFEST_BLOB_UNKNOWN blob unknown to registry)"
        );
        let hostile = r#"{"errors":[{"code":"X","message":"\u001b[2J\u001b[31mgotcha\r\n"}]}"#;
        let detail = registry_error_detail(hostile);
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
        let failure = status_failure(
            "x".into(),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            "",
        );
        assert!(failure.is_retryable());
        assert!(
            !status_failure("x".into(), StatusCode::NOT_FOUND, &HeaderMap::new(), "")
                .is_retryable()
        );
    }

    #[test]
    fn handed_urls_keep_https_and_carry_no_credentials() {
        let transport =
            Transport::new(&["insecure.example:5000".to_string()], Arc::default()).unwrap();
        let https = Url::parse("https://registry.example/v2/").unwrap();
        let plain = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        let check = |from: &Url, to: &str| {
            transport
                .check_handed_url(from, &Url::parse(to).unwrap(), "x")
                .is_ok()
        };
        assert!(check(&https, "https://cdn.example/blob?sig=1"));
        assert!(!check(&https, "http://cdn.example/blob"));
        assert!(check(&https, "http://insecure.example:5000/x"));
        assert!(check(&https, "http://127.0.0.1:9/x"));
        assert!(!check(&https, "https://user:pw@cdn.example/x"));
        assert!(!check(&https, "file:///etc/passwd"));
        assert!(check(&plain, "http://127.0.0.1:5000/v2/upload"));
        let relaxed_for = |url: &str| transport.is_relaxed(&Url::parse(url).unwrap());
        assert!(relaxed_for("https://127.0.0.1:5000/"));
        assert!(relaxed_for("https://insecure.example:5000/"));
        let default_port =
            Transport::new(&["registry.example:443".to_string()], Arc::default()).unwrap();
        assert!(default_port.is_relaxed(&Url::parse("https://registry.example/").unwrap()));
        assert!(!relaxed_for("https://insecure.example/"));
        assert!(!relaxed_for("https://127.evil.example/"));
    }
}
