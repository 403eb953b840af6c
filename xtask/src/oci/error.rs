//! The one error type of the registry client. Callers decide what to do by matching a
//! variant or asking `is_retryable()`, never by reading the message.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Content that does not hash to the digest it was fetched or pushed by.
    #[error("digest mismatch: {what} has other content than its digest says; refusing it")]
    DigestMismatch { what: String },
    /// Content whose length is not the one its descriptor declares.
    #[error("{what}: {detail}")]
    SizeMismatch { what: String, detail: String },
    /// A name, digest or reference that is not well formed, from whoever supplied it.
    #[error("{0}")]
    Invalid(String),
    /// An answer refused as hostile or unusable: too large, a URL we will not follow, a
    /// header that cannot be read.
    #[error("{0}")]
    Refused(String),
    /// The registry answered with an error status.
    #[error("{what}: {status}{detail}{hint}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        detail: String,
        hint: &'static str,
        retry_after: Option<Duration>,
    },
    /// The connection failed, timed out, or a body broke off.
    #[error("{detail}")]
    Network {
        detail: String,
        retryable: bool,
        cause: NetworkCause,
    },
    /// No registry answers at that address.
    #[error("{0}")]
    Unreachable(String),
    /// The Docker config or a credential helper could not give credentials.
    #[error("{0}")]
    Credentials(String),
    /// What was being done when `source` happened.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

/// Why a connection failed, which decides the hint a user gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkCause {
    /// The TLS handshake failed: no TLS, or a certificate we do not trust.
    Tls,
    /// Something answered, but nothing listens on that port.
    Refused,
    TimedOut,
    Other,
}

impl Error {
    /// Worth another try: rate limits, timeouts, 5xx and broken connections.
    pub fn is_retryable(&self) -> bool {
        match self.root() {
            Error::Status { status, .. } => {
                status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error()
            }
            Error::Network { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// How long the server asked us to wait before the next try.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.root() {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Why the connection failed, when it did.
    pub fn network_cause(&self) -> Option<NetworkCause> {
        match self.root() {
            Error::Network { cause, .. } => Some(*cause),
            _ => None,
        }
    }

    /// The error under every layer of context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// Whether the registry answered with one of `statuses`, under any context.
    pub fn has_status(&self, statuses: &[u16]) -> bool {
        matches!(self.root(), Error::Status { status, .. } if statuses.contains(&status.as_u16()))
    }

    pub fn is_digest_mismatch(&self) -> bool {
        matches!(self.root(), Error::DigestMismatch { .. })
    }

    /// `self` under `context`, unless the message already starts with it.
    pub fn context(self, context: impl Into<String>) -> Error {
        let context = context.into();
        if self.to_string().starts_with(&context) {
            return self;
        }
        Error::Context {
            context,
            source: Box::new(self),
        }
    }

    pub fn transient(detail: impl Into<String>) -> Error {
        Error::Network {
            detail: detail.into(),
            retryable: true,
            cause: NetworkCause::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_and_mismatch_survive_context() {
        let status = |code: u16| Error::Status {
            what: "GET".into(),
            status: reqwest::StatusCode::from_u16(code).unwrap(),
            detail: String::new(),
            hint: "",
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(status(503).context("copying").is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert_eq!(
            status(503).context("x").retry_after(),
            Some(Duration::from_secs(2))
        );
        let mismatch = Error::DigestMismatch {
            what: "blob".into(),
        }
        .context("copying");
        assert!(mismatch.is_digest_mismatch());
        assert!(!mismatch.is_retryable());
        assert_eq!(
            mismatch.to_string(),
            "copying: digest mismatch: blob has other content than its digest says; refusing it"
        );
        let named = Error::Invalid("GET x: bad".into()).context("GET x");
        assert!(matches!(named, Error::Invalid(_)), "no repeated context");
    }
}
