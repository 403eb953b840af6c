//! Registry auth: credentials from the Docker config and its helpers, the registry's
//! challenge, and bearer tokens. Credentials go only to the registry's own origin and
//! to a token service in its domain over HTTPS; anywhere else a token is asked for
//! anonymously.

use base64::Engine as _;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::Url;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::error::{Error, Result};
use super::transport::{failure_from, read_bounded, Stats, Transport, METADATA_DEADLINE};
use crate::text::printable;

/// A token answer larger than this is not a token.
const MAX_TOKEN_BODY: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub enum Challenge {
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

pub struct Auth {
    /// The registry as reached, for deciding where credentials may go.
    registry: Url,
    credential: Credential,
    pub challenge: Challenge,
    tokens: Mutex<HashMap<String, String>>,
}

impl Auth {
    pub fn new(registry: Url, credential: Credential, challenge: Challenge) -> Auth {
        Auth {
            registry,
            credential,
            challenge,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn uses_tokens(&self) -> bool {
        matches!(self.challenge, Challenge::Bearer { .. })
    }

    pub fn forget_token(&self, scopes: &[String]) {
        self.tokens.lock().unwrap().remove(&scopes.join(" "));
    }

    /// The Authorization header for a request to the registry's own origin.
    pub async fn authorization(
        &self,
        transport: &Transport,
        stats: &Stats,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>> {
        match (&self.challenge, &self.credential) {
            (Challenge::None, _) => Ok(None),
            (Challenge::Basic, Credential::Basic(user, password)) => {
                Ok(Some(basic_header(user, password)))
            }
            (Challenge::Basic, _) => Ok(None),
            (Challenge::Bearer { realm, service }, _) => {
                let key = scopes.join(" ");
                if let Some(token) = self.tokens.lock().unwrap().get(&key) {
                    return Ok(Some(bearer_header(token)));
                }
                let token = self
                    .fetch_token(transport, stats, realm, service.as_deref(), scopes)
                    .await?;
                self.tokens.lock().unwrap().insert(key, token.clone());
                Ok(Some(bearer_header(&token)))
            }
        }
    }

    async fn fetch_token(
        &self,
        transport: &Transport,
        stats: &Stats,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String> {
        let host = self.registry.host_str().unwrap_or("");
        let what = format!("getting a token for {host}");
        let realm = Url::parse(realm).map_err(|_| {
            Error::Refused(format!(
                "{what}: the registry named an unreadable token service '{}'",
                printable(realm)
            ))
        })?;
        transport.check_handed_url(&self.registry, &realm, &what)?;
        let trusted = realm_may_have_credentials(&self.registry, &realm);
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = service {
            query.push(("service", service));
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let client = transport.client_for(&realm);
        let request = match (&self.credential, trusted) {
            (Credential::IdentityToken(refresh), true) => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "kubeopencode-xtask"),
                ]);
                client.post(realm.clone()).form(&form)
            }
            (Credential::Basic(user, password), true) => client
                .get(realm.clone())
                .query(&query)
                .basic_auth(user, Some(password)),
            _ => client.get(realm.clone()).query(&query),
        };
        let response = transport.send(request.timeout(METADATA_DEADLINE)).await?;
        if !response.status().is_success() {
            let failure = failure_from(what.clone(), response).await;
            if !trusted && !matches!(self.credential, Credential::Anonymous) {
                return Err(failure.context(format!(
                    "the token service {} is outside {host}'s domain, so {host}'s credentials were not sent to it",
                    printable(realm.host_str().unwrap_or(""))
                )));
            }
            return Err(failure);
        }
        let body = read_bounded(response, MAX_TOKEN_BODY, &what, false).await?;
        let body: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| Error::Refused(format!("{what}: the token service answered non-JSON")))?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .filter(|t| HeaderValue::from_str(&format!("Bearer {t}")).is_ok())
            .map(String::from)
            .ok_or_else(|| {
                Error::Refused(format!("{what}: the token service sent no usable token"))
            })
    }
}

/// A token service may get the user's credentials when it is on the registry's host,
/// or shares its parent domain (`registry-1.docker.io` and `auth.docker.io`), and the
/// scheme does not drop to plain HTTP. Anything else is some other party.
pub fn realm_may_have_credentials(registry: &Url, realm: &Url) -> bool {
    let (Some(registry_host), Some(realm_host)) = (registry.host_str(), realm.host_str()) else {
        return false;
    };
    if registry.scheme() == "https" && realm.scheme() != "https" {
        return false;
    }
    if registry_host == realm_host {
        return true;
    }
    if registry_host.parse::<std::net::IpAddr>().is_ok()
        || registry_host.starts_with('[')
        || realm_host.parse::<std::net::IpAddr>().is_ok()
    {
        return false;
    }
    let parent = |host: &str| host.split_once('.').map(|(_, rest)| rest.to_string());
    match parent(registry_host) {
        // The parent must itself be a domain with a dot, never a bare TLD.
        Some(domain) if domain.contains('.') => {
            realm_host == domain || realm_host.ends_with(&format!(".{domain}"))
        }
        _ => false,
    }
}

pub fn parse_challenge(value: Option<&HeaderValue>) -> Challenge {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
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

pub fn challenge_of(response: &reqwest::Response) -> Challenge {
    parse_challenge(response.headers().get(WWW_AUTHENTICATE))
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
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

/// Credentials for `host` from the Docker config and its credential helpers. Secrets are
/// never printed; an absent config means anonymous access.
pub async fn credential_for(host: &str) -> Result<Credential> {
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
    let found = tokio::task::spawn_blocking(move || docker_credential::get_credential(&key))
        .await
        .map_err(|_| Error::Credentials(format!("reading credentials for {host} stopped")))?;
    use docker_credential::{CredentialRetrievalError as E, DockerCredential as D};
    match found {
        Ok(D::UsernamePassword(user, password)) => Ok(Credential::Basic(user, password)),
        Ok(D::IdentityToken(token)) => Ok(Credential::IdentityToken(token)),
        Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(Credential::Anonymous),
        Err(E::ConfigReadError) => Err(Error::Credentials(format!("cannot read the Docker config for {host}'s credentials; check ~/.docker/config.json or $DOCKER_CONFIG"))),
        Err(E::HelperFailure { helper, .. }) => {
            Err(Error::Credentials(format!("the Docker credential helper '{helper}' failed for {host}; run `docker login {host}`")))
        }
        Err(other) => Err(Error::Credentials(format!("reading credentials for {host} from the Docker config failed: {}", credential_error_kind(&other)))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let bearer = HeaderValue::from_static(
            r#"Bearer realm="https://auth.example/token",service="registry.example""#,
        );
        match parse_challenge(Some(&bearer)) {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            other => panic!("{other:?}"),
        }
        let basic = HeaderValue::from_static(r#"Basic realm="x""#);
        assert!(matches!(parse_challenge(Some(&basic)), Challenge::Basic));
    }

    #[test]
    fn basic_auth_is_rfc4648_base64_and_sensitive() {
        let header = basic_header("user", "pass");
        assert_eq!(header.to_str().unwrap(), "Basic dXNlcjpwYXNz");
        assert!(header.is_sensitive());
    }

    #[test]
    fn credentials_go_only_to_token_services_in_the_registry_domain() {
        let url = |s: &str| Url::parse(s).unwrap();
        let hub = url("https://registry-1.docker.io/v2/");
        assert!(realm_may_have_credentials(
            &hub,
            &url("https://auth.docker.io/token")
        ));
        assert!(!realm_may_have_credentials(
            &hub,
            &url("http://auth.docker.io/token")
        ));
        assert!(!realm_may_have_credentials(
            &hub,
            &url("https://evil.example/token")
        ));
        assert!(!realm_may_have_credentials(
            &hub,
            &url("https://docker.io.evil.example/t")
        ));
        let ghcr = url("https://ghcr.io/v2/");
        assert!(realm_may_have_credentials(
            &ghcr,
            &url("https://ghcr.io/token")
        ));
        // A bare TLD is no shared domain.
        assert!(!realm_may_have_credentials(
            &ghcr,
            &url("https://evil.io/token")
        ));
        let local = url("http://127.0.0.1:5000/v2/");
        assert!(realm_may_have_credentials(
            &local,
            &url("http://127.0.0.1:5001/auth")
        ));
        assert!(!realm_may_have_credentials(
            &local,
            &url("http://10.0.0.1/auth")
        ));
    }
}
