//! A client for the OCI distribution API, as the mirror needs it: manifests as exact
//! bytes, HEAD before GET, blobs copied with resumable reads and uploads, and
//! cross-repository mounts. Transport and auth live beside it (`transport`, `auth`).

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::auth::{challenge_of, credential_for, Auth, Challenge};
use super::error::{Error, NetworkCause, Result};
use super::limits::HostLimits;
use super::name::{Digest, Reference, Registry, Repository, Tag};
pub use super::transport::{describe_reqwest, with_retry, Stats};
use super::transport::{
    error_body, failure_from, origin, read_bounded, registry_error_detail, Transport,
    METADATA_DEADLINE,
};

pub use super::media::MANIFEST_TYPES;

/// A manifest's identity as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What a DELETE of a manifest came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// Nothing by that name (deleted already, with another tag on the same digest).
    Absent,
    /// 400 or 405: deletes are off, or this kind of delete is not supported. `detail`
    /// is the registry's error codes, printable, e.g. ` (UNSUPPORTED …)`.
    Declined {
        status: StatusCode,
        detail: String,
    },
}

/// One registry's API, connected: every call takes parsed names and returns checked
/// content.
pub struct Client {
    /// The host as written in references (`docker.io`, `127.0.0.1:5000`).
    pub host: Registry,
    base: Url,
    transport: Transport,
    auth: Auth,
    pub stats: Arc<Stats>,
}

/// What a request carries, which decides its deadline: metadata must finish within
/// `METADATA_DEADLINE`; blob bodies are watched for stalls by their reader instead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    Metadata,
    Blob,
}

impl Client {
    /// Connects to `host`: verified TLS, except for loopback and `insecure` hosts, which
    /// may also speak plain HTTP.
    pub async fn connect(
        host: &Registry,
        insecure: &[String],
        limits: &Arc<HostLimits>,
        stats: Arc<Stats>,
    ) -> Result<Arc<Client>> {
        let api_host = host.api_host();
        let transport = Transport::new(insecure, limits.clone())?;
        let https = Url::parse(&format!("https://{api_host}/"))
            .map_err(|_| Error::Invalid(format!("'{host}' is not a registry host")))?;
        let relaxed = transport.is_relaxed(&https);
        let credential = credential_for(host).await?;
        // Loopback and --insecure hosts may speak plain HTTP: one quick TLS try, then
        // HTTP with retries. Everything else is HTTPS, verified, with retries.
        let probe = |base: Url, retries: bool| {
            let transport = &transport;
            let stats = stats.clone();
            async move {
                let url = base.join("v2/").expect("a fixed path");
                let get = || async {
                    let request = transport
                        .client_for(&url)
                        .get(url.clone())
                        .timeout(METADATA_DEADLINE);
                    let response = transport.send(request).await?;
                    let status = response.status();
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(failure_from(format!("GET /v2/ at {host}"), response).await);
                    }
                    Ok(response)
                };
                if retries {
                    with_retry(&format!("reaching registry {host}"), &stats, get).await
                } else {
                    get().await
                }
            }
        };
        let (base, response) = if relaxed {
            match probe(https.clone(), false).await {
                Ok(response) => (https, response),
                Err(_) => {
                    let plain = Url::parse(&format!("http://{api_host}/"))
                        .map_err(|_| Error::Invalid(format!("'{host}' is not a registry host")))?;
                    match probe(plain.clone(), true).await {
                        Ok(response) => (plain, response),
                        Err(e) => {
                            return Err(Error::Unreachable(format!("registry {host} is unreachable over HTTPS and HTTP: {}; check the address and that it is running", e.root())));
                        }
                    }
                }
            }
        } else {
            match probe(https.clone(), true).await {
                Ok(response) => (https, response),
                Err(e) => {
                    let hint = unreachable_hint(host, &https, &e).await;
                    return Err(Error::Unreachable(format!(
                        "registry {host} is unreachable: {}; {hint}",
                        e.root()
                    )));
                }
            }
        };
        let challenge = match response.status() {
            StatusCode::UNAUTHORIZED => challenge_of(&response),
            status if status.is_success() => Challenge::None,
            status => {
                return Err(Error::Unreachable(format!(
                    "registry {host} answered GET /v2/ with {status}; is it an OCI registry?"
                )))
            }
        };
        Ok(Arc::new(Client {
            host: host.clone(),
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
    ) -> Result<reqwest::Response> {
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
                let response = self.transport.send(request).await?;
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

    /// The API URL of `endpoint` in `repository`. Both are parsed names, so nothing but
    /// a repository path, a tag or a well-formed digest ever becomes a path segment.
    fn url(&self, repository: &Repository, endpoint: Endpoint) -> Result<Url> {
        let tail = match endpoint {
            Endpoint::Manifest(reference) => format!("manifests/{reference}"),
            Endpoint::Blob(digest) => format!("blobs/{digest}"),
            Endpoint::Uploads => "blobs/uploads/".to_string(),
            Endpoint::Referrers(digest) => format!("referrers/{digest}"),
            Endpoint::Tags => "tags/list".to_string(),
        };
        self.base
            .join(&format!("v2/{repository}/{tail}"))
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.host)))
    }

    /// A request without a body to `endpoint` of `repository`, with the access it needs.
    async fn ask(
        &self,
        method: Method,
        repository: &Repository,
        endpoint: Endpoint<'_>,
        access: Access,
        headers: HeaderMap,
    ) -> Result<reqwest::Response> {
        let scopes = match access {
            Access::Pull => repository.pull_scope(),
            Access::Push => repository.push_scope(),
            Access::Delete => repository.delete_scope(),
        };
        let url = self.url(repository, endpoint)?;
        self.send(method, &url, &scopes, headers, None, Payload::Metadata)
            .await
    }

    /// An upload location the registry handed back, checked like a redirect: it may
    /// not step down to plain HTTP, and credentials follow it only on the same origin.
    fn upload_url(&self, location: &str, what: &str) -> Result<Url> {
        let url = self.base.join(location).map_err(|_| {
            Error::Refused(format!("{what}: the registry sent an unreadable Location"))
        })?;
        self.transport.check_handed_url(&self.base, &url, what)?;
        Ok(url)
    }

    /// HEAD of a manifest: its digest without downloading it. None when absent.
    pub async fn head_manifest(
        &self,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<Option<Described>> {
        let what = format!("HEAD manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .ask(
                    Method::HEAD,
                    repository,
                    Endpoint::Manifest(reference),
                    Access::Pull,
                    accept_manifests(),
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND => Ok(None),
                status if status.is_success() => {
                    let headers = response.headers();
                    let digest = header(headers, "docker-content-digest").ok_or_else(|| {
                        Error::Refused(format!(
                            "{} sent no Docker-Content-Digest for {repository}:{reference}",
                            self.host
                        ))
                    })?;
                    let digest = Digest::parse(&digest).map_err(|e| {
                        Error::Refused(format!(
                            "{} sent a bad Docker-Content-Digest for {repository}:{reference}: {e}",
                            self.host
                        ))
                    })?;
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
    pub async fn get_manifest(
        &self,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<(Bytes, String)> {
        let what = format!("GET manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .ask(
                    Method::GET,
                    repository,
                    Endpoint::Manifest(reference),
                    Access::Pull,
                    accept_manifests(),
                )
                .await?;
            if !response.status().is_success() {
                return Err(failure_from(what.clone(), response).await);
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &what, false).await?;
            if let Reference::Digest(pinned) = reference {
                if !pinned.matches(&bytes) {
                    return Err(Error::DigestMismatch {
                        what: format!("manifest {}/{repository}@{pinned}", self.host),
                    });
                }
            }
            Ok((bytes, media_type))
        })
        .await
    }

    /// GET of a manifest with the digest of what came back: the pinned one, or for a
    /// tag the canonical sha256 of the exact bytes.
    pub async fn resolve(
        &self,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<(Bytes, String, Digest)> {
        let (bytes, media_type) = self.get_manifest(repository, reference).await?;
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(_) => Digest::of_sha256(&bytes),
        };
        Ok((bytes, media_type, digest))
    }

    /// PUT of a manifest, byte for byte.
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &Reference,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<()> {
        let what = format!("PUT manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_str(media_type).map_err(|_| {
                    Error::Invalid(format!("{what}: the media type is not a header value"))
                })?,
            );
            let response = self
                .send(
                    Method::PUT,
                    &self.url(repository, Endpoint::Manifest(reference))?,
                    &repository.push_scope(),
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

    /// DELETE of a manifest by digest (it goes with every tag on it, in distribution) or
    /// of one tag (optional in the spec). What the registry declined is the caller's to
    /// judge: deletes turned off, or no deleting a tag alone.
    pub async fn delete_manifest(
        &self,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<Deletion> {
        let what = format!("DELETE manifest {}/{repository}:{reference}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .ask(
                    Method::DELETE,
                    repository,
                    Endpoint::Manifest(reference),
                    Access::Delete,
                    HeaderMap::new(),
                )
                .await?;
            match response.status() {
                status if status.is_success() => Ok(Deletion::Deleted),
                StatusCode::NOT_FOUND => Ok(Deletion::Absent),
                status @ (StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED) => {
                    let body = error_body(response, &what).await;
                    Ok(Deletion::Declined {
                        status,
                        detail: registry_error_detail(&body),
                    })
                }
                _ => Err(failure_from(what.clone(), response).await),
            }
        })
        .await
    }

    /// Whether the blob is in `repository`.
    pub async fn has_blob(&self, repository: &Repository, digest: &Digest) -> Result<bool> {
        let what = format!("HEAD blob {}/{repository}@{digest}", self.host);
        with_retry(&what, &self.stats, || async {
            let response = self
                .ask(
                    Method::HEAD,
                    repository,
                    Endpoint::Blob(digest),
                    Access::Push,
                    HeaderMap::new(),
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
    pub async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<bool> {
        let what = format!(
            "mount blob {digest} from {from} into {}/{repository}",
            self.host
        );
        let mut url = self.url(repository, Endpoint::Uploads)?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from.as_str());
        let mut scopes = repository.push_scope();
        scopes.extend(from.pull_scope());
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

    /// Starts a blob GET from byte `from` (a Range request when not 0). Only the
    /// verifying reader in `blobs` streams the body; it reads a 200 to a Range request
    /// as "Range ignored".
    pub(super) async fn get_blob_from(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: u64,
    ) -> Result<reqwest::Response> {
        let mut headers = HeaderMap::new();
        if from > 0 {
            let range = HeaderValue::from_str(&format!("bytes={from}-")).expect("digits");
            headers.insert(RANGE, range);
        }
        let response = self
            .send(
                Method::GET,
                &self.url(repository, Endpoint::Blob(digest))?,
                &repository.pull_scope(),
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

    /// A small blob (a config) whole: at most `limit` bytes, checked against its digest.
    pub async fn get_small_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes> {
        let what = format!("blob {digest} of {}/{repository}", self.host);
        let bytes = with_retry(&format!("GET {what}"), &self.stats, || async {
            let response = self.get_blob_from(repository, digest, 0).await?;
            read_bounded(response, limit, &what, false).await
        })
        .await?;
        if !digest.matches(&bytes) {
            return Err(Error::DigestMismatch { what });
        }
        Ok(bytes)
    }

    /// Opens an upload session; its location.
    pub(super) async fn start_upload(&self, repository: &Repository) -> Result<Url> {
        let what = format!("starting an upload to {}/{repository}", self.host);
        let response = self
            .ask(
                Method::POST,
                repository,
                Endpoint::Uploads,
                Access::Push,
                HeaderMap::new(),
            )
            .await?;
        self.next_location(response, &what).await
    }

    /// Where an upload goes on: a 202's Location, checked.
    async fn next_location(&self, response: reqwest::Response, what: &str) -> Result<Url> {
        if response.status() != StatusCode::ACCEPTED {
            return Err(failure_from(what.to_string(), response).await);
        }
        let location = header(response.headers(), LOCATION.as_str())
            .ok_or_else(|| Error::Refused(format!("{what}: no Location for the upload")))?;
        self.upload_url(&location, what)
    }

    /// Appends `length` bytes at `offset` to an upload; the session's next location.
    pub(super) async fn patch_upload(
        &self,
        repository: &Repository,
        session: &Url,
        offset: u64,
        length: u64,
        body: reqwest::Body,
    ) -> Result<Url> {
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
                &repository.push_scope(),
                headers,
                Some(body),
                Payload::Blob,
            )
            .await?;
        self.next_location(response, &what).await
    }

    /// How much of an upload the registry holds, and where to continue it. None when
    /// the session is gone (distribution drops a session whose chunk broke off).
    pub(super) async fn upload_offset(
        &self,
        repository: &Repository,
        session: &Url,
    ) -> Result<Option<(Url, u64)>> {
        let what = format!("asking {}/{repository} about an upload", self.host);
        let response = self
            .send(
                Method::GET,
                session,
                &repository.push_scope(),
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
    pub(super) async fn commit_upload(
        &self,
        repository: &Repository,
        session: &Url,
        digest: &Digest,
        body: Option<(u64, reqwest::Body)>,
    ) -> Result<()> {
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
            .send(
                Method::PUT,
                &url,
                &repository.push_scope(),
                headers,
                body,
                payload,
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(failure_from(what, response).await)
    }

    /// Drops an upload session; best effort, a registry expires them anyway.
    pub(super) async fn cancel_upload(&self, repository: &Repository, session: &Url) {
        let _ = self
            .send(
                Method::DELETE,
                session,
                &repository.push_scope(),
                HeaderMap::new(),
                None,
                Payload::Metadata,
            )
            .await;
    }

    /// Uploads a blob from a stream with one monolithic PUT of `size` bytes. The stream
    /// is trusted to be what `digest` says (the registry checks it too); untrusted
    /// bytes go through `blobs::upload_verified`.
    pub async fn put_blob_stream<S, E>(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: u64,
        stream: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let session = self.start_upload(repository).await?;
        self.commit_upload(
            repository,
            &session,
            digest,
            Some((size, reqwest::Body::wrap_stream(stream))),
        )
        .await
    }

    /// Referrers of `digest` (OCI 1.1). None when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<serde_json::Value>> {
        let what = format!("GET referrers of {}/{repository}@{digest}", self.host);
        with_retry(&what, &self.stats, || async {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(super::media::OCI_INDEX));
            let response = self
                .ask(
                    Method::GET,
                    repository,
                    Endpoint::Referrers(digest),
                    Access::Pull,
                    headers,
                )
                .await?;
            match response.status() {
                StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::BAD_REQUEST => Ok(None),
                status if status.is_success() => {
                    let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &what, false).await?;
                    let index = serde_json::from_slice(&bytes).map_err(|_| {
                        Error::Refused(format!("{what}: the answer is not a JSON index"))
                    })?;
                    Ok(Some(index))
                }
                _ => Err(failure_from(what.clone(), response).await),
            }
        })
        .await
    }
}

impl Client {
    /// Every tag of `repository`, following the `Link: <…>; rel="next"` pages to the
    /// end. The list is hostile input: each page is bounded, the count is capped at
    /// `MAX_TAGS`, a next page must be this repository's tag list on this origin (the
    /// request carries credentials), and a page seen before ends it as a loop.
    pub async fn list_tags(&self, repository: &Repository) -> Result<Vec<Tag>> {
        let what = format!("tag list of {}/{repository}", self.host);
        let first = self.url(repository, Endpoint::Tags)?;
        let scopes = repository.pull_scope();
        let names = self
            .list_pages(&first, &scopes, Listing::Tags, &what)
            .await?;
        names
            .iter()
            .map(|name| Tag::parse(name).map_err(|_| listed_wrongly(&what, name, "a tag")))
            .collect()
    }

    /// The repositories `/v2/_catalog` lists, every page, read as hostile as a tag list.
    /// None when the registry does not serve it to us (401, 403, 404, 405): many turn
    /// it off or keep it for administrators.
    pub async fn catalog(&self) -> Result<Option<Vec<Repository>>> {
        let what = format!("catalog of {}", self.host);
        let first = self
            .base
            .join("v2/_catalog")
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.host)))?;
        let scopes = ["registry:catalog:*".to_string()];
        let listed = self
            .list_pages(&first, &scopes, Listing::Catalog, &what)
            .await;
        let names = match listed {
            Ok(names) => names,
            Err(e) if e.has_status(&[401, 403, 404, 405]) => return Ok(None),
            Err(e) => return Err(e),
        };
        names
            .iter()
            .map(|name| {
                Repository::parse(name).map_err(|_| listed_wrongly(&what, name, "a repository"))
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Every name of a paged list (tags, or the catalog), from `first` to the last page.
    async fn list_pages(
        &self,
        first: &Url,
        scopes: &[String],
        listing: Listing,
        what: &str,
    ) -> Result<Vec<String>> {
        let mut next = Some(first.clone());
        let mut seen_pages = std::collections::HashSet::new();
        let mut names = Vec::new();
        while let Some(page) = next.take() {
            if !seen_pages.insert(page_key(&page)) {
                return Err(Error::Refused(format!(
                    "{what}: the registry's next page points back to a page already read (a pagination loop); refusing it"
                )));
            }
            let (page_names, link) = self.list_page(&page, scopes, listing, what).await?;
            if page_names.is_empty() && link.is_some() {
                return Err(Error::Refused(format!(
                    "{what}: an empty page that points to another; refusing the list"
                )));
            }
            if names.len() + page_names.len() > MAX_TAGS {
                return Err(Error::Refused(format!(
                    "{what}: more than {MAX_TAGS} {}; refusing the list ({})",
                    listing.noun(),
                    listing.hint()
                )));
            }
            names.extend(page_names);
            next = match link {
                Some(link) => Some(next_page(first, &page, &link, listing, what)?),
                None => None,
            };
        }
        Ok(names)
    }

    /// One page of a list: its names and its `Link` header, if any.
    async fn list_page(
        &self,
        page: &Url,
        scopes: &[String],
        listing: Listing,
        what: &str,
    ) -> Result<(Vec<String>, Option<String>)> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
            repositories: Option<Vec<String>>,
        }
        with_retry(&format!("GET {what}"), &self.stats, || async {
            let response = self
                .send(
                    Method::GET,
                    page,
                    scopes,
                    HeaderMap::new(),
                    None,
                    Payload::Metadata,
                )
                .await?;
            if !response.status().is_success() {
                return Err(failure_from(format!("GET {what}"), response).await);
            }
            let link = response
                .headers()
                .get(reqwest::header::LINK)
                .map(|v| v.to_str().map(str::to_string));
            let link = match link {
                Some(Ok(link)) => Some(link),
                Some(Err(_)) => {
                    return Err(Error::Refused(format!(
                        "{what}: an unreadable Link header; refusing the list"
                    )))
                }
                None => None,
            };
            let bytes = read_bounded(response, MAX_TAG_PAGE_BYTES, what, false).await?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                Error::Refused(format!("{what}: the answer is not UTF-8; refusing it"))
            })?;
            let page: Page = serde_json::from_str(text).map_err(|_| {
                Error::Refused(format!(
                    "{what}: the answer is not {}; refusing it",
                    listing.shape()
                ))
            })?;
            let names = match listing {
                Listing::Tags => page.tags,
                Listing::Catalog => page.repositories,
            };
            Ok((names.unwrap_or_default(), link))
        })
        .await
    }
}

/// A paged list: one repository's tags, or the registry's catalog of repositories.
#[derive(Clone, Copy)]
enum Listing {
    Tags,
    Catalog,
}

impl Listing {
    fn noun(self) -> &'static str {
        match self {
            Listing::Tags => "tags",
            Listing::Catalog => "repositories",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Listing::Tags => "name fixed tags in the list instead",
            Listing::Catalog => "a catalog is read whole or not at all",
        }
    }

    fn shape(self) -> &'static str {
        match self {
            Listing::Tags => "a JSON tag list ({\"name\", \"tags\"})",
            Listing::Catalog => "a JSON catalog ({\"repositories\"})",
        }
    }

    fn this(self) -> &'static str {
        match self {
            Listing::Tags => "this repository's tag list",
            Listing::Catalog => "the catalog",
        }
    }
}

/// A name a list gave that is not `kind`: the whole list is refused.
fn listed_wrongly(what: &str, name: &str, kind: &str) -> Error {
    Error::Refused(format!(
        "{what}: the registry listed '{}', which is not {kind}; refusing the list",
        crate::text::printable(name)
    ))
}

/// A page's identity for loop detection: its path and query, with `last` decoded.
fn page_key(page: &Url) -> String {
    let mut pairs: Vec<(String, String)> = page.query_pairs().into_owned().collect();
    pairs.sort();
    format!("{}?{pairs:?}", page.path())
}

/// The next page a `Link` header names: `<URL>; rel="next"`, resolved against the page
/// it came with, and only on the first page's origin and path.
fn next_page(first: &Url, page: &Url, link: &str, listing: Listing, what: &str) -> Result<Url> {
    let target = link
        .split(',')
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))
        .and_then(|part| {
            let part = part.trim();
            part.strip_prefix('<')?.split_once('>').map(|(url, _)| url)
        })
        .ok_or_else(|| {
            Error::Refused(format!(
                "{what}: a Link header without a <URL>; rel=\"next\"; refusing the list"
            ))
        })?;
    let next = page
        .join(target)
        .map_err(|_| Error::Refused(format!("{what}: an unreadable next-page URL")))?;
    if origin(&next) != origin(first) {
        return Err(Error::Refused(format!(
            "{what}: the next page is on another origin ({}); refusing it, credentials never leave the registry",
            crate::text::printable(&format!(
                "{}://{}",
                next.scheme(),
                next.host_str().unwrap_or("")
            ))
        )));
    }
    if next.path() != first.path() || !next.username().is_empty() || next.password().is_some() {
        return Err(Error::Refused(format!(
            "{what}: the next page is not {}; refusing it",
            listing.this()
        )));
    }
    Ok(next)
}

/// The most tags a repository may list: more is refused, not truncated, since a
/// truncated list would select other tags than the registry holds.
pub const MAX_TAGS: usize = 10_000;
/// One page of a tag list: 10 000 tags of the longest legal name fit in 1.3 MiB.
const MAX_TAG_PAGE_BYTES: u64 = 2 << 20;

/// What to try next when `host` did not answer over verified HTTPS: only a failed TLS
/// handshake points at --insecure; a name that does not resolve or a closed port do not.
async fn unreachable_hint(host: &Registry, https: &Url, error: &Error) -> String {
    match error.network_cause() {
        Some(NetworkCause::Tls) => format!(
            "if it serves no TLS or a certificate no trusted CA signed, pass --insecure {host}"
        ),
        Some(NetworkCause::Refused) => {
            "nothing listens there; check the port and that the registry is running".into()
        }
        Some(NetworkCause::TimedOut) => {
            "no answer in time; check the address, the network and any proxy".into()
        }
        _ => {
            let (Some(name), Some(port)) = (https.host_str(), https.port_or_known_default()) else {
                return "check the address".into();
            };
            match tokio::net::lookup_host((name, port)).await {
                Err(_) => format!("the name {name} does not resolve; check the host name"),
                Ok(_) => "check the address and the network".into(),
            }
        }
    }
}

/// What a request asks of a repository's access.
#[derive(Clone, Copy)]
enum Access {
    Pull,
    Push,
    Delete,
}

/// What a request addresses in a repository.
#[derive(Clone, Copy)]
enum Endpoint<'a> {
    Manifest(&'a Reference),
    Blob(&'a Digest),
    Uploads,
    Referrers(&'a Digest),
    Tags,
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

/// A manifest larger than this is refused unread (the distribution registry's own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A stream over a channel's receiver.
pub fn receiver_stream<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|item| (item, r))
    })
}
