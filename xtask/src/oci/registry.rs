//! A client for the OCI distribution API, as the mirror needs it: manifests as exact
//! bytes, HEAD before GET, streamed and verified blobs, cross-repository mounts,
//! token auth from the Docker config, and retries that honour `Retry-After`.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Digest;

/// Every manifest type the mirror copies.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
];

const MAX_ATTEMPTS: u32 = 7;

/// What a failed request means for the caller.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn fatal(error: anyhow::Error) -> Failure {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
    fn transient(error: anyhow::Error, retry_after: Option<Duration>) -> Failure {
        Failure {
            error,
            retryable: true,
            retry_after,
        }
    }
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Failure {
        // Connection resets, timeouts and truncated bodies are worth another try.
        let retryable =
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode();
        Failure {
            error: anyhow!(describe_reqwest(&e)),
            retryable,
            retry_after: None,
        }
    }
}

pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs `op` until it succeeds, fails for good, or runs out of attempts. Waits with
/// exponential backoff and jitter, or as long as the server's `Retry-After` says.
pub async fn with_retry<T, F, Fut>(what: &str, stats: &Stats, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(value) => return Ok(value),
            Err(failure) if failure.retryable && attempt < MAX_ATTEMPTS => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(7)));
                let jittered = backoff.mul_f64(0.5 + fastrand::f64());
                let wait = failure
                    .retry_after
                    .unwrap_or(jittered)
                    .min(Duration::from_secs(60));
                tracing_retry(what, attempt, &failure.error, wait);
                tokio::time::sleep(wait).await;
            }
            Err(failure) => {
                let error = failure.error;
                // Most failures already start with `what`; saying it twice helps nobody.
                let named = error.to_string().starts_with(what);
                return Err(match (attempt > 1, named) {
                    (true, _) => {
                        error.context(format!("{what} (gave up after {attempt} attempts)"))
                    }
                    (false, true) => error,
                    (false, false) => error.context(what.to_string()),
                });
            }
        }
    }
}

fn tracing_retry(what: &str, attempt: u32, error: &anyhow::Error, wait: Duration) {
    if std::env::var_os("XTASK_MIRROR_DEBUG").is_some() {
        eprintln!("retry {attempt} of {what} in {wait:?}: {error:#}");
    }
}

/// Counters for the summary and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_copied: AtomicU64,
}

#[derive(Debug, Clone)]
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum Credential {
    Anonymous,
    Basic(String, String),
    IdentityToken(String),
}

/// A manifest's identity as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

pub struct Registry {
    /// The host as written in references (`docker.io`, `127.0.0.1:5000`).
    pub host: String,
    base: String,
    http: reqwest::Client,
    credential: Credential,
    challenge: Challenge,
    tokens: Mutex<HashMap<String, String>>,
    pub stats: Arc<Stats>,
}

pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    // An address, not a prefix: `127.evil.example` is a name anyone can point anywhere.
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Registry {
    /// Connects to `host`: verified TLS, except for loopback and `insecure` hosts, which
    /// may also speak plain HTTP.
    pub async fn connect(
        host: &str,
        insecure: &[String],
        stats: Arc<Stats>,
    ) -> Result<Arc<Registry>> {
        let api_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let relaxed = is_loopback(host) || insecure.iter().any(|h| h == host);
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(relaxed)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(32)
            .user_agent(concat!("kubeopencode-xtask/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let credential = credential_for(host).await?;
        // Loopback and --insecure hosts may speak plain HTTP: one quick TLS try, then
        // HTTP with retries. Everything else is HTTPS, verified, with retries.
        let https = format!("https://{api_host}");
        let probe = |base: String, attempts_allowed: bool| {
            let http = http.clone();
            let stats = stats.clone();
            async move {
                let url = format!("{base}/v2/");
                if attempts_allowed {
                    with_retry(&format!("reaching registry {host}"), &stats, || {
                        let http = http.clone();
                        let url = url.clone();
                        async move { Ok::<_, Failure>(http.get(url).send().await?) }
                    })
                    .await
                } else {
                    http.get(url)
                        .send()
                        .await
                        .map_err(|e| anyhow!(describe_reqwest(&e)))
                }
            }
        };
        let (base, response) = if relaxed {
            match probe(https.clone(), false).await {
                Ok(response) => (https, response),
                Err(_) => {
                    let plain = format!("http://{api_host}");
                    match probe(plain.clone(), true).await {
                        Ok(response) => (plain, response),
                        Err(e) => {
                            return Err(anyhow!("registry {host} is unreachable over HTTPS and HTTP: {}; check the address and that it is running", e.root_cause()));
                        }
                    }
                }
            }
        } else {
            match probe(https.clone(), true).await {
                Ok(response) => (https, response),
                Err(e) => {
                    return Err(anyhow!(
                        "registry {host} is unreachable: {}; check the address, or pass --insecure {host} for a registry without valid TLS",
                        e.root_cause()
                    ))
                }
            }
        };
        let challenge = match response.status() {
            StatusCode::UNAUTHORIZED => parse_challenge(response.headers()),
            status if status.is_success() => Challenge::None,
            status => {
                return Err(anyhow!(
                    "registry {host} answered GET /v2/ with {status}; is it an OCI registry?"
                ))
            }
        };
        Ok(Arc::new(Registry {
            host: host.to_string(),
            base,
            http,
            credential,
            challenge,
            tokens: Mutex::new(HashMap::new()),
            stats,
        }))
    }

    /// True when this registry answered on plain HTTP (loopback and --insecure only).
    pub fn plain_http(&self) -> bool {
        self.base.starts_with("http://")
    }

    async fn authorization(
        &self,
        scopes: &[String],
    ) -> std::result::Result<Option<HeaderValue>, Failure> {
        match (&self.challenge, &self.credential) {
            (Challenge::None, _) => Ok(None),
            (Challenge::Basic, Credential::Basic(user, password)) => {
                Ok(Some(basic_header(user, password)))
            }
            (Challenge::Basic, _) => Ok(None),
            (Challenge::Bearer { realm, service }, credential) => {
                let key = scopes.join(" ");
                if let Some(token) = self.tokens.lock().unwrap().get(&key) {
                    return Ok(Some(bearer_header(token)));
                }
                let token = self
                    .fetch_token(realm, service.as_deref(), scopes, credential)
                    .await?;
                self.tokens.lock().unwrap().insert(key, token.clone());
                Ok(Some(bearer_header(&token)))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credential: &Credential,
    ) -> std::result::Result<String, Failure> {
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = service {
            query.push(("service", service));
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = match credential {
            Credential::IdentityToken(refresh) => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "kubeopencode-xtask"),
                ]);
                self.http.post(realm).form(&form).send().await?
            }
            Credential::Basic(user, password) => {
                self.http
                    .get(realm)
                    .query(&query)
                    .basic_auth(user, Some(password))
                    .send()
                    .await?
            }
            Credential::Anonymous => self.http.get(realm).query(&query).send().await?,
        };
        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(
                format!("getting a token from {realm}"),
                status,
                response.headers(),
                "",
            ));
        }
        let body: serde_json::Value = response.json().await?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .map(String::from)
            .ok_or_else(|| {
                Failure::fatal(anyhow!(
                    "the token service {realm} answered without a token"
                ))
            })
    }

    /// One request with auth; a 401 drops the cached token and tries once more.
    async fn send(
        &self,
        method: Method,
        url: &str,
        scopes: &[String],
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let replayable = body
            .as_ref()
            .map(|b| b.as_bytes().map(Bytes::copy_from_slice));
        let mut body = body;
        for attempt in 0..2 {
            let mut request = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(auth) = self.authorization(scopes).await? {
                request = request.header(AUTHORIZATION, auth);
            }
            if let Some(b) = body.take() {
                request = request.body(b);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let response = request.send().await?;
            if response.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(self.challenge, Challenge::Bearer { .. })
            {
                self.tokens.lock().unwrap().remove(&scopes.join(" "));
                match &replayable {
                    Some(Some(bytes)) => body = Some(reqwest::Body::from(bytes.clone())),
                    Some(None) => return Ok(response),
                    None => {}
                }
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The API URL for `tail` in `repository`. Every reference and digest that reaches a
    /// URL passes here, whoever supplied it (a list, a bundle, or another registry's
    /// index, referrers or headers), so nothing but a tag or a well-formed digest ever
    /// becomes a path segment.
    fn url(&self, repository: &str, tail: &str) -> std::result::Result<String, Failure> {
        api_path(repository, tail)
            .map(|path| format!("{}/v2/{path}", self.base))
            .map_err(Failure::fatal)
    }

    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// HEAD of a manifest: its digest without downloading it. None when absent.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Described>> {
        let what = format!("HEAD manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .send(
                    Method::HEAD,
                    &self.url(repository, &format!("manifests/{reference}"))?,
                    &pull(repository),
                    accept_manifests(),
                    None,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND => Ok(None),
                status if status.is_success() => {
                    let headers = response.headers();
                    let digest = header(headers, "docker-content-digest").ok_or_else(|| {
                        Failure::fatal(anyhow!(
                            "{} sent no Docker-Content-Digest for {repository}:{reference}",
                            self.host
                        ))
                    })?;
                    let digest = Digest::parse(&digest)
                        .map_err(|e| {
                            Failure::fatal(anyhow!(
                                "{} sent a bad Docker-Content-Digest for {repository}:{reference}: {e}",
                                self.host
                            ))
                        })?
                        .to_string();
                    Ok(Some(Described {
                        digest,
                        media_type: header(headers, CONTENT_TYPE.as_str()).unwrap_or_default(),
                        size: header(headers, CONTENT_LENGTH.as_str())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                    }))
                }
                status => Err(status_failure(what.clone(), status, response.headers(), "")),
            }
        })
        .await
    }

    /// GET of a manifest: the exact bytes, checked against `expected` when given.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<(Bytes, String)> {
        let what = format!("GET manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .send(
                    Method::GET,
                    &self.url(repository, &format!("manifests/{reference}"))?,
                    &pull(repository),
                    accept_manifests(),
                    None,
                )
                .await?;
            let status = response.status();
            if !status.is_success() {
                let headers = response.headers().clone();
                let body = response.text().await.unwrap_or_default();
                return Err(status_failure(what.clone(), status, &headers, &body));
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &what).await?;
            if let Ok(pinned) = Digest::parse(reference) {
                if !pinned.matches(&bytes) {
                    return Err(Failure::fatal(anyhow!(DigestMismatch {
                        what: format!("manifest {}/{repository}@{pinned}", self.host),
                    })));
                }
            } else if reference.contains(':') {
                return Err(Failure::fatal(anyhow!(
                    "{}",
                    Digest::parse(reference).unwrap_err()
                )));
            }
            Ok((bytes, media_type))
        })
        .await
    }

    /// PUT of a manifest, byte for byte.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<()> {
        let what = format!("PUT manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_str(media_type).map_err(|e| Failure::fatal(e.into()))?,
            );
            let response = self
                .send(
                    Method::PUT,
                    &self.url(repository, &format!("manifests/{reference}"))?,
                    &push(repository),
                    headers,
                    Some(bytes.clone().into()),
                )
                .await?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let headers = response.headers().clone();
            let body = response.text().await.unwrap_or_default();
            Err(status_failure(what.clone(), status, &headers, &body))
        })
        .await
    }

    /// Whether the blob is in `repository`.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        let what = format!("HEAD blob {}/{repository}@{digest}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .send(
                    Method::HEAD,
                    &self.url(repository, &format!("blobs/{digest}"))?,
                    &push(repository),
                    HeaderMap::new(),
                    None,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND => Ok(false),
                status if status.is_success() => Ok(true),
                status => Err(status_failure(what.clone(), status, response.headers(), "")),
            }
        })
        .await
    }

    /// Asks the registry to link a blob from another of its repositories. False when it
    /// declines (then the caller copies the blob).
    pub async fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool> {
        let what = format!(
            "mount blob {digest} from {from} into {}/{repository}",
            self.host
        );
        let url = format!(
            "{}?mount={}&from={from}",
            self.url(repository, "blobs/uploads/")
                .map_err(|f| f.error)?,
            Digest::parse(digest)?,
        );
        api_path(from, "blobs/uploads/")?;
        let mut scopes = push(repository);
        scopes.extend(pull(from));
        let location = with_retry(&what, &self.stats, || async {
            let response = self
                .send(Method::POST, &url, &scopes, HeaderMap::new(), None)
                .await?;
            match response.status() {
                StatusCode::CREATED => Ok(None),
                StatusCode::ACCEPTED => Ok(header(response.headers(), LOCATION.as_str())),
                status => Err(status_failure(what.clone(), status, response.headers(), "")),
            }
        })
        .await?;
        match location {
            None => Ok(true),
            Some(location) => {
                // The registry opened an upload instead; close it rather than leak it.
                let _ = self
                    .send(
                        Method::DELETE,
                        &self.resolve(&location),
                        &push(repository),
                        HeaderMap::new(),
                        None,
                    )
                    .await;
                Ok(false)
            }
        }
    }

    /// Starts a blob GET; the caller streams the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let response = self
            .send(
                Method::GET,
                &self.url(repository, &format!("blobs/{digest}"))?,
                &pull(repository),
                HeaderMap::new(),
                None,
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response.text().await.unwrap_or_default();
            return Err(status_failure(
                format!("GET blob {}/{repository}@{digest}", self.host),
                status,
                &headers,
                &body,
            ));
        }
        Ok(response)
    }

    /// Uploads a blob from a stream with one monolithic PUT of `size` bytes.
    pub async fn put_blob_stream<S>(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        stream: S,
    ) -> std::result::Result<(), Failure>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + Sync + 'static,
    {
        let start = self
            .send(
                Method::POST,
                &self.url(repository, "blobs/uploads/")?,
                &push(repository),
                HeaderMap::new(),
                None,
            )
            .await?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(status_failure(
                format!("starting an upload to {}/{repository}", self.host),
                start.status(),
                start.headers(),
                "",
            ));
        }
        let location = header(start.headers(), LOCATION.as_str()).ok_or_else(|| {
            Failure::fatal(anyhow!("{} opened an upload without a Location", self.host))
        })?;
        let location = self.resolve(&location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let digest = Digest::parse(digest).map_err(Failure::fatal)?;
        let url = format!("{location}{separator}digest={digest}");
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let response = self
            .send(
                Method::PUT,
                &url,
                &push(repository),
                headers,
                Some(reqwest::Body::wrap_stream(stream)),
            )
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Err(status_failure(
            format!("uploading blob {digest} to {}/{repository}", self.host),
            status,
            &headers,
            &body,
        ))
    }

    /// Uploads `body` as blob `digest`, verifying size and digest on the fly; a mismatch
    /// is fatal and the upload never completes.
    pub async fn put_verified<S>(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
        label: String,
    ) -> std::result::Result<(), Failure>
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
    {
        let mismatch: Arc<Mutex<Option<String>>> = Arc::default();
        let flag = mismatch.clone();
        let verified = verified_stream(body, digest.to_string(), size, self.stats.clone(), label)
            .map(move |item| {
                if let Err(e) = &item {
                    if e.to_string().contains("digest mismatch") {
                        *flag.lock().unwrap() = Some(e.to_string());
                    }
                }
                item
            });
        // A channel of one chunk makes the body Sync for reqwest and caps memory,
        // whatever the blob size.
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let pump = tokio::spawn(async move {
            let mut verified = Box::pin(verified);
            while let Some(item) = verified.next().await {
                if sender.send(item).await.is_err() {
                    break;
                }
            }
        });
        let result = self
            .put_blob_stream(repository, digest, size, receiver_stream(receiver))
            .await;
        pump.abort();
        if let Some(message) = mismatch.lock().unwrap().take() {
            return Err(Failure::fatal(anyhow!(
                "{message}; refused, nothing was pushed"
            )));
        }
        result
    }

    /// Referrers of `digest` (OCI 1.1). None when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<serde_json::Value>> {
        let what = format!("GET referrers of {}/{repository}@{digest}", self.host);
        with_retry(&what, &self.stats, || async {
            let mut headers = HeaderMap::new();
            headers.insert(
                ACCEPT,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            let response = self
                .send(
                    Method::GET,
                    &self.url(repository, &format!("referrers/{digest}"))?,
                    &pull(repository),
                    headers,
                    None,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::BAD_REQUEST => Ok(None),
                status if status.is_success() => Ok(Some(response.json().await?)),
                status => Err(status_failure(what.clone(), status, response.headers(), "")),
            }
        })
        .await
    }
}

fn pull(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

fn push(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

fn accept_manifests() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("static header"),
    );
    headers
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    use base64_engine::encode;
    let mut value = HeaderValue::from_str(&format!(
        "Basic {}",
        encode(format!("{user}:{password}").as_bytes())
    ))
    .expect("base64 is a valid header");
    value.set_sensitive(true);
    value
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

/// Base64 for Basic auth, without another dependency.
mod base64_engine {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn parse_challenge(headers: &HeaderMap) -> Challenge {
    let Some(value) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return Challenge::Basic;
    };
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Basic;
    }
    let mut realm = None;
    let mut service = None;
    for part in params.split(',') {
        if let Some((key, val)) = part.trim().split_once('=') {
            let val = val.trim_matches('"').to_string();
            match key {
                "realm" => realm = Some(val),
                "service" => service = Some(val),
                _ => {}
            }
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::Basic,
    }
}

/// A failure from an HTTP status: 429, 408 and 5xx are transient.
fn status_failure(what: String, status: StatusCode, headers: &HeaderMap, body: &str) -> Failure {
    let detail = registry_error_detail(body);
    let error = anyhow!("{what}: {status}{detail}");
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Failure::transient(error, retry_after)
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        Failure::fatal(error.context("check the credentials in your Docker config (docker login)"))
    } else {
        Failure::fatal(error)
    }
}

fn registry_error_detail(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let messages: Vec<String> = json["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["code"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                    .trim()
                    .to_string()
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

/// `<repository>/<tail>` once both are checked: a repository of lower-case path
/// components, and a tail naming a manifest by tag or digest, a blob or referrers by
/// digest, or the upload endpoint.
pub fn api_path(repository: &str, tail: &str) -> Result<String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(component_ok) {
        return Err(anyhow!(
            "'{}' is not a repository name; refusing to put it in a URL",
            super::digest::printable(repository)
        ));
    }
    let (kind, value) = tail.split_once('/').unwrap_or((tail, ""));
    let valid = match kind {
        "manifests" => Digest::parse(value).is_ok() || is_tag(value),
        "blobs" => value == "uploads/" || Digest::parse(value).is_ok(),
        "referrers" => Digest::parse(value).is_ok(),
        _ => false,
    };
    if !valid {
        return Err(anyhow!(
            "'{}' is neither a tag nor a digest; refusing to put it in a URL",
            super::digest::printable(value)
        ));
    }
    Ok(format!("{repository}/{tail}"))
}

/// A tag as the distribution spec defines it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(value: &str) -> bool {
    value.len() <= 128
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A manifest larger than this is refused unread (the distribution registry's own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Content that does not hash to the digest it was fetched by.
#[derive(Debug)]
pub struct DigestMismatch {
    pub what: String,
}

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "digest mismatch: {} has other content than its digest says; refusing it",
            self.what
        )
    }
}

impl std::error::Error for DigestMismatch {}

/// The body, refused as soon as it passes `limit` bytes, so a hostile server cannot
/// make us hold more than that.
pub async fn read_bounded(
    response: reqwest::Response,
    limit: u64,
    what: &str,
) -> std::result::Result<Bytes, Failure> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(Failure::fatal(anyhow!(
            "{what}: the body is larger than the {limit}-byte limit; refusing it"
        )));
    }
    let mut body = response.bytes_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(Failure::fatal(anyhow!(
                "{what}: the body is larger than the {limit}-byte limit; refusing it"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Credentials for `host` from the Docker config and its credential helpers. Secrets are
/// never printed; an absent config means anonymous access.
async fn credential_for(host: &str) -> Result<Credential> {
    let config = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".docker"))
        })
        .map(|dir| dir.join("config.json"));
    if !config.is_some_and(|path| path.is_file()) {
        return Ok(Credential::Anonymous);
    }
    let key = if host == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    };
    let found =
        tokio::task::spawn_blocking(move || docker_credential::get_credential(&key)).await?;
    use docker_credential::{CredentialRetrievalError as E, DockerCredential as D};
    match found {
        Ok(D::UsernamePassword(user, password)) => Ok(Credential::Basic(user, password)),
        Ok(D::IdentityToken(token)) => Ok(Credential::IdentityToken(token)),
        Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(Credential::Anonymous),
        Err(E::ConfigReadError) => Err(anyhow!("cannot read the Docker config for {host}'s credentials; check ~/.docker/config.json or $DOCKER_CONFIG")),
        Err(E::HelperFailure { helper, .. }) => {
            Err(anyhow!("the Docker credential helper '{helper}' failed for {host}; run `docker login {host}`"))
        }
        Err(other) => Err(anyhow!("reading credentials for {host} from the Docker config failed: {}", credential_error_kind(&other))),
    }
}

fn credential_error_kind(error: &docker_credential::CredentialRetrievalError) -> &'static str {
    use docker_credential::CredentialRetrievalError as E;
    match error {
        E::HelperCommunicationError => "cannot talk to the credential helper",
        E::MalformedHelperResponse => "the credential helper answered something unreadable",
        E::CredentialDecodingError => "the stored credential cannot be decoded",
        _ => "unexpected answer",
    }
}

/// Wraps a blob body: counts bytes, hashes on the fly, and holds the last chunk back
/// until the digest and size check out, so a corrupt blob never completes an upload.
pub fn verified_stream(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
    digest: String,
    size: u64,
    stats: Arc<Stats>,
    what: String,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static {
    struct State<S> {
        body: S,
        hasher: Sha256,
        seen: u64,
        held: Option<Bytes>,
        done: bool,
    }
    let state = State {
        body,
        hasher: Sha256::new(),
        seen: 0,
        held: None,
        done: false,
    };
    futures_util::stream::unfold(state, move |mut s| {
        let digest = digest.clone();
        let stats = stats.clone();
        let what = what.clone();
        async move {
            if s.done {
                return None;
            }
            loop {
                match s.body.next().await {
                    Some(Ok(chunk)) => {
                        s.hasher.update(&chunk);
                        s.seen += chunk.len() as u64;
                        stats
                            .bytes_copied
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if s.seen > size {
                            s.done = true;
                            return Some((
                                Err(io_error(format!(
                                    "{what}: more than the {size} bytes the manifest declares"
                                ))),
                                s,
                            ));
                        }
                        if let Some(previous) = s.held.replace(chunk) {
                            return Some((Ok(previous), s));
                        }
                    }
                    Some(Err(e)) => {
                        s.done = true;
                        return Some((
                            Err(io_error(format!("{what}: {}", describe_reqwest(&e)))),
                            s,
                        ));
                    }
                    None => {
                        s.done = true;
                        let actual = format!(
                            "sha256:{}",
                            hex::encode(std::mem::take(&mut s.hasher).finalize())
                        );
                        if s.seen != size {
                            return Some((
                                Err(io_error(format!("{what}: got {} of {size} bytes", s.seen))),
                                s,
                            ));
                        }
                        if actual != digest {
                            return Some((
                                Err(io_error(format!(
                                    "digest mismatch: {what} has content with digest {actual}"
                                ))),
                                s,
                            ));
                        }
                        return s.held.take().map(|last| (Ok(last), s));
                    }
                }
            }
        }
    })
}

/// A stream over a channel's receiver.
pub fn receiver_stream<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|item| (item, r))
    })
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:5000",
            "localhost:80",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry.example.com", "10.0.0.1:5000", "docker.io"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

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
    fn challenges() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="registry.example""#,
            ),
        );
        match parse_challenge(&headers) {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            other => panic!("{other:?}"),
        }
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert!(matches!(parse_challenge(&headers), Challenge::Basic));
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64_engine::encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn registry_errors_are_summarised() {
        let body =
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        assert_eq!(
            registry_error_detail(body),
            " (MANIFEST_BLOB_UNKNOWN blob unknown to registry)"
        );
        let failure = status_failure(
            "x".into(),
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            "",
        );
        assert!(failure.retryable);
        assert!(
            !status_failure("x".into(), StatusCode::NOT_FOUND, &HeaderMap::new(), "").retryable
        );
    }

    #[tokio::test]
    async fn verified_stream_holds_back_a_corrupt_tail() {
        let data = Bytes::from_static(b"hello world");
        let good = sha256_digest(&data);
        let chunks = || {
            futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"hello ")),
                Ok(Bytes::from_static(b"world")),
            ])
        };
        let stats = Arc::new(Stats::default());
        let ok: Vec<_> = verified_stream(chunks(), good.clone(), 11, stats.clone(), "blob".into())
            .collect()
            .await;
        assert_eq!(ok.len(), 2);
        assert!(ok.iter().all(|c| c.is_ok()));
        let bad: Vec<_> = verified_stream(
            chunks(),
            sha256_digest(b"other"),
            11,
            stats.clone(),
            "blob".into(),
        )
        .collect()
        .await;
        // Only the first chunk went out; the last one was replaced by the error.
        assert_eq!(bad.len(), 2);
        assert!(bad[0].is_ok());
        assert!(bad[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("digest mismatch"));
        let short: Vec<_> = verified_stream(chunks(), good, 12, stats, "blob".into())
            .collect()
            .await;
        assert!(short
            .last()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("11 of 12"));
    }

    #[test]
    fn only_tags_and_digests_become_url_path_segments() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            api_path("org/img", &format!("manifests/{digest}")).unwrap(),
            format!("org/img/manifests/{digest}")
        );
        assert!(api_path("org/img", "manifests/v1.2.3").is_ok());
        assert!(api_path("org/img", "blobs/uploads/").is_ok());
        for (repository, tail) in [
            (
                "org/img",
                format!("manifests/{digest}/../../other/repo/manifests/latest"),
            ),
            ("org/img", format!("blobs/{digest}/../../x")),
            ("org/img", format!("referrers/{digest}?x=1")),
            ("org/img", "manifests/../latest".to_string()),
            ("org/img", "manifests/".to_string()),
            ("org/img", format!("blobs/sha256:{}", "Z".repeat(64))),
            ("org/../img", format!("blobs/{digest}")),
            ("Org/img", format!("blobs/{digest}")),
            ("org//img", format!("blobs/{digest}")),
        ] {
            let err = api_path(repository, &tail);
            assert!(err.is_err(), "accepted {repository} {tail}");
        }
    }

    #[test]
    fn loopback_is_an_address_not_a_prefix() {
        for host in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "127.evil.example",
            "127.evil.example:443",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
