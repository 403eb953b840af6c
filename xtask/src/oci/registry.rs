//! A client for the OCI distribution API, as the mirror needs it: manifests as exact
//! bytes, HEAD before GET, blobs copied with resumable reads and uploads, and
//! cross-repository mounts. Transport and auth live beside it (`transport`, `auth`).

use anyhow::{anyhow, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::auth::{challenge_of, credential_for, Auth, Challenge};
pub use super::transport::{describe_reqwest, with_retry, Failure, Stats};
use super::transport::{failure_from, origin, read_bounded, Transport, METADATA_DEADLINE};
use super::Digest;

/// Every manifest type the mirror copies.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
];

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
    base: Url,
    transport: Transport,
    auth: Auth,
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

/// What a request carries, which decides its deadline: metadata must finish within
/// `METADATA_DEADLINE`; blob bodies are watched for stalls by their reader instead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    Metadata,
    Blob,
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
        let transport = Transport::new(insecure)?;
        let https = Url::parse(&format!("https://{api_host}/"))
            .map_err(|_| anyhow!("'{host}' is not a registry host"))?;
        let relaxed = transport.is_relaxed(&https);
        let credential = credential_for(host).await?;
        // Loopback and --insecure hosts may speak plain HTTP: one quick TLS try, then
        // HTTP with retries. Everything else is HTTPS, verified, with retries.
        let probe = |base: Url, retries: bool| {
            let client = transport.client_for(&base).clone();
            let stats = stats.clone();
            async move {
                let url = base.join("v2/").expect("a fixed path");
                let get = || async {
                    let response = client
                        .get(url.clone())
                        .timeout(METADATA_DEADLINE)
                        .send()
                        .await?;
                    let status = response.status();
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(failure_from(format!("GET /v2/ at {host}"), response).await);
                    }
                    Ok(response)
                };
                if retries {
                    with_retry(&format!("reaching registry {host}"), &stats, get).await
                } else {
                    get().await.map_err(|f| f.error)
                }
            }
        };
        let (base, response) = if relaxed {
            match probe(https.clone(), false).await {
                Ok(response) => (https, response),
                Err(_) => {
                    let plain = Url::parse(&format!("http://{api_host}/"))?;
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
            StatusCode::UNAUTHORIZED => challenge_of(&response),
            status if status.is_success() => Challenge::None,
            status => {
                return Err(anyhow!(
                    "registry {host} answered GET /v2/ with {status}; is it an OCI registry?"
                ))
            }
        };
        Ok(Arc::new(Registry {
            host: host.to_string(),
            auth: Auth::new(base.clone(), credential, challenge),
            base,
            transport,
            stats,
        }))
    }

    /// True when this registry answered on plain HTTP (loopback and --insecure only).
    pub fn plain_http(&self) -> bool {
        self.base.scheme() == "http"
    }

    /// One request. Credentials go only to the registry's own origin; GET and HEAD
    /// follow redirects by hand, each hop checked and given the client its host
    /// deserves. A 401 drops the cached token and tries once more.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        scopes: &[String],
        headers: HeaderMap,
        body: Option<reqwest::Body>,
        payload: Payload,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let what = format!("{method} at {}", self.host);
        let replayable = body
            .as_ref()
            .map(|b| b.as_bytes().map(Bytes::copy_from_slice));
        let mut body = body;
        let follows = method == Method::GET || method == Method::HEAD;
        for attempt in 0..2 {
            let mut at = url.clone();
            let mut hops = 0;
            let response = loop {
                let mut request = self
                    .transport
                    .client_for(&at)
                    .request(method.clone(), at.clone())
                    .headers(headers.clone());
                if payload == Payload::Metadata {
                    request = request.timeout(METADATA_DEADLINE);
                }
                if origin(&at) == origin(&self.base) {
                    if let Some(auth) = self
                        .auth
                        .authorization(&self.transport, &self.stats, scopes)
                        .await?
                    {
                        request = request.header(AUTHORIZATION, auth);
                    }
                }
                if let Some(b) = body.take() {
                    request = request.body(b);
                }
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let response = request.send().await?;
                if follows {
                    if let Some(next) = self
                        .transport
                        .redirect_target(&at, &response, &what, hops)?
                    {
                        at = next;
                        hops += 1;
                        continue;
                    }
                }
                break response;
            };
            if response.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && self.auth.uses_tokens()
                && origin(&at) == origin(&self.base)
            {
                self.auth.forget_token(scopes);
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
    fn url(&self, repository: &str, tail: &str) -> std::result::Result<Url, Failure> {
        let path = api_path(repository, tail).map_err(Failure::fatal)?;
        self.base
            .join(&format!("v2/{path}"))
            .map_err(|e| Failure::fatal(anyhow!("{}: {e}", self.host)))
    }

    /// An upload location the registry handed back, checked like a redirect: it may
    /// not step down to plain HTTP, and credentials follow it only on the same origin.
    fn upload_url(&self, location: &str, what: &str) -> std::result::Result<Url, Failure> {
        let url = self.base.join(location).map_err(|_| {
            Failure::fatal(anyhow!("{what}: the registry sent an unreadable Location"))
        })?;
        self.transport.check_handed_url(&self.base, &url, what)?;
        Ok(url)
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
                    Payload::Metadata,
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
                _ => Err(failure_from(what.clone(), response).await),
            }
        })
        .await
    }

    /// GET of a manifest: the exact bytes, checked against the reference when it is a
    /// digest.
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
                    Payload::Metadata,
                )
                .await?;
            if !response.status().is_success() {
                return Err(failure_from(what.clone(), response).await);
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &what, false).await?;
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
                    Payload::Metadata,
                )
                .await?;
            if response.status().is_success() {
                return Ok(());
            }
            Err(failure_from(what.clone(), response).await)
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
                    Payload::Metadata,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND => Ok(false),
                status if status.is_success() => Ok(true),
                _ => Err(failure_from(what.clone(), response).await),
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
        let mut url = self
            .url(repository, "blobs/uploads/")
            .map_err(|f| f.error)?;
        api_path(from, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", Digest::parse(digest)?.as_str())
            .append_pair("from", from);
        let mut scopes = push(repository);
        scopes.extend(pull(from));
        let location = with_retry(&what, &self.stats, || async {
            let response = self
                .send(
                    Method::POST,
                    &url,
                    &scopes,
                    HeaderMap::new(),
                    None,
                    Payload::Metadata,
                )
                .await?;
            match response.status() {
                StatusCode::CREATED => Ok(None),
                StatusCode::ACCEPTED => Ok(header(response.headers(), LOCATION.as_str())),
                _ => Err(failure_from(what.clone(), response).await),
            }
        })
        .await?;
        match location {
            None => Ok(true),
            Some(location) => {
                // The registry opened an upload instead; close it rather than leak it.
                if let Ok(url) = self.upload_url(&location, &what) {
                    self.cancel_upload(repository, &url).await;
                }
                Ok(false)
            }
        }
    }

    /// Starts a blob GET from byte `from` (a Range request when not 0); the caller
    /// streams the body, and reads a 200 to a Range request as "Range ignored".
    pub async fn get_blob_from(
        &self,
        repository: &str,
        digest: &str,
        from: u64,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let mut headers = HeaderMap::new();
        if from > 0 {
            let range = HeaderValue::from_str(&format!("bytes={from}-")).expect("digits");
            headers.insert(RANGE, range);
        }
        let response = self
            .send(
                Method::GET,
                &self.url(repository, &format!("blobs/{digest}"))?,
                &pull(repository),
                headers,
                None,
                Payload::Blob,
            )
            .await?;
        if !response.status().is_success() {
            return Err(failure_from(
                format!("GET blob {}/{repository}@{digest}", self.host),
                response,
            )
            .await);
        }
        Ok(response)
    }

    /// Starts a blob GET; the caller streams the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> std::result::Result<reqwest::Response, Failure> {
        self.get_blob_from(repository, digest, 0).await
    }

    /// Opens an upload session; its location.
    pub async fn start_upload(&self, repository: &str) -> std::result::Result<Url, Failure> {
        let what = format!("starting an upload to {}/{repository}", self.host);
        let response = self
            .send(
                Method::POST,
                &self.url(repository, "blobs/uploads/")?,
                &push(repository),
                HeaderMap::new(),
                None,
                Payload::Metadata,
            )
            .await?;
        self.next_location(response, &what).await
    }

    /// Where an upload goes on: a 202's Location, checked.
    async fn next_location(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> std::result::Result<Url, Failure> {
        if response.status() != StatusCode::ACCEPTED {
            return Err(failure_from(what.to_string(), response).await);
        }
        let location = header(response.headers(), LOCATION.as_str())
            .ok_or_else(|| Failure::fatal(anyhow!("{what}: no Location for the upload")))?;
        self.upload_url(&location, what)
    }

    /// Appends `length` bytes at `offset` to an upload; the session's next location.
    pub async fn patch_upload(
        &self,
        repository: &str,
        session: &Url,
        offset: u64,
        length: u64,
        body: reqwest::Body,
    ) -> std::result::Result<Url, Failure> {
        let what = format!("uploading to {}/{repository}", self.host);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        let range = format!("{offset}-{}", (offset + length).saturating_sub(1));
        headers.insert(
            "content-range",
            HeaderValue::from_str(&range).expect("digits and a dash"),
        );
        let response = self
            .send(
                Method::PATCH,
                session,
                &push(repository),
                headers,
                Some(body),
                Payload::Blob,
            )
            .await?;
        self.next_location(response, &what).await
    }

    /// How much of an upload the registry holds, and where to continue it. None when
    /// the session is gone (distribution drops a session whose chunk broke off).
    pub async fn upload_offset(
        &self,
        repository: &str,
        session: &Url,
    ) -> std::result::Result<Option<(Url, u64)>, Failure> {
        let what = format!("asking {}/{repository} about an upload", self.host);
        let response = self
            .send(
                Method::GET,
                session,
                &push(repository),
                HeaderMap::new(),
                None,
                Payload::Metadata,
            )
            .await?;
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(failure_from(what, response).await);
        }
        if status != StatusCode::NO_CONTENT {
            return Ok(None);
        }
        // `Range: 0-<last byte>`. distribution says "0-0" for an empty session too, so
        // that reads as nothing held: a byte sent twice fails the commit's digest check
        // and the blob starts over, where a byte skipped would not be noticed as early.
        let held = match header(response.headers(), RANGE.as_str()) {
            Some(range) => range
                .trim_start_matches("bytes=")
                .split_once('-')
                .and_then(|(_, end)| end.parse::<u64>().ok())
                .map(|end| if end == 0 { 0 } else { end + 1 }),
            None => Some(0),
        };
        let location = match header(response.headers(), LOCATION.as_str()) {
            Some(location) => self.upload_url(&location, &what)?,
            None => session.clone(),
        };
        Ok(held.map(|held| (location, held)))
    }

    /// Completes an upload as blob `digest`; the registry checks the digest itself.
    pub async fn commit_upload(
        &self,
        repository: &str,
        session: &Url,
        digest: &Digest,
        body: Option<(u64, reqwest::Body)>,
    ) -> std::result::Result<(), Failure> {
        let what = format!("uploading blob {digest} to {}/{repository}", self.host);
        let mut url = session.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let (length, body, payload) = match body {
            Some((length, body)) => (length, Some(body), Payload::Blob),
            None => (0, None, Payload::Metadata),
        };
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        let response = self
            .send(Method::PUT, &url, &push(repository), headers, body, payload)
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(failure_from(what, response).await)
    }

    /// Drops an upload session; best effort, a registry expires them anyway.
    pub async fn cancel_upload(&self, repository: &str, session: &Url) {
        let _ = self
            .send(
                Method::DELETE,
                session,
                &push(repository),
                HeaderMap::new(),
                None,
                Payload::Metadata,
            )
            .await;
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
        let digest = Digest::parse(digest).map_err(Failure::fatal)?;
        let session = self.start_upload(repository).await?;
        self.commit_upload(
            repository,
            &session,
            &digest,
            Some((size, reqwest::Body::wrap_stream(stream))),
        )
        .await
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
                    Payload::Metadata,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::BAD_REQUEST => Ok(None),
                status if status.is_success() => {
                    let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &what, false).await?;
                    let index = serde_json::from_slice(&bytes).map_err(|_| {
                        Failure::fatal(anyhow!("{what}: the answer is not a JSON index"))
                    })?;
                    Ok(Some(index))
                }
                _ => Err(failure_from(what.clone(), response).await),
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
            crate::text::printable(repository)
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
            crate::text::printable(value)
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

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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
