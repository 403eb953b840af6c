//! The name layer: registry hosts, repositories, tags, digests and references, each
//! parsed once with this project's rules. Whatever a user, a list, a bundle or another
//! registry supplies passes through here before it reaches a URL, a path or a file, so
//! nothing downstream checks a string again.

use serde::Serialize;
use std::fmt;

pub use super::digest::Digest;
use super::error::{Error, Result};
use crate::text::printable;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(input: &str) -> Result<$name> {
                $name::parse(input)
            }
        }
    };
}

name_type!(
    /// A registry host as references name it: `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    Registry
);
name_type!(
    /// A repository path: lower-case components of `[a-z0-9._-]` separated by `/`.
    Repository
);
name_type!(
    /// A tag as the distribution spec defines it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag
);

pub const DOCKER_HUB: &str = "docker.io";

impl Registry {
    pub fn parse(host: &str) -> Result<Registry> {
        if !is_valid_host(host) {
            return Err(Error::Invalid(format!(
                "registry host '{}' is invalid; write a host name (letters, digits, '-' between \
                 dots), an IPv4 address or a bracketed IPv6 address, optionally with :PORT",
                host.escape_debug()
            )));
        }
        Ok(Registry(host.to_string()))
    }

    /// The host the API lives on: Docker Hub's is not the one its references name.
    pub fn api_host(&self) -> &str {
        if self.0 == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.0
        }
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.0)
    }
}

impl Repository {
    pub fn parse(path: &str) -> Result<Repository> {
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if path.len() > 255 || !path.split('/').all(component_ok) {
            return Err(Error::Invalid(format!(
                "repository '{}' is invalid (lower-case letters, digits and '._-' separated by '/')",
                printable(path)
            )));
        }
        Ok(Repository(path.to_string()))
    }

    /// `self` below `prefix` (a repository path itself).
    pub fn under(&self, prefix: &str) -> Result<Repository> {
        if prefix.is_empty() {
            return Ok(self.clone());
        }
        Repository::parse(&format!("{prefix}/{}", self.0))
    }

    pub fn pull_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull", self.0)]
    }

    pub fn delete_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:delete", self.0)]
    }

    pub fn push_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull,push", self.0)]
    }
}

impl Tag {
    pub fn parse(tag: &str) -> Result<Tag> {
        if !is_tag(tag) {
            return Err(Error::Invalid(format!(
                "tag '{}' is invalid (letters, digits, '_', '.', '-'; at most 128; not starting \
                 with '.' or '-')",
                printable(tag)
            )));
        }
        Ok(Tag(tag.to_string()))
    }

    /// The image a cosign attachment tag belongs to: `sha256-<hex>.sig/.att/.sbom`, or
    /// the referrers fallback index `sha256-<hex>`. None for any other tag.
    pub fn attached_to(&self) -> Option<Digest> {
        Digest::parse(&format!("sha256:{}", attachment_hex(&self.0)?)).ok()
    }

    pub fn latest() -> Tag {
        Tag("latest".to_string())
    }
}

/// The hex of a cosign attachment tag (see `Tag::attached_to`).
pub fn attachment_hex(tag: &str) -> Option<&str> {
    let hex = tag.strip_prefix("sha256-")?;
    let hex = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|suffix| hex.strip_suffix(suffix))
        .unwrap_or(hex);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn is_tag(value: &str) -> bool {
    value.len() <= 128
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What a manifest is asked for by: a tag, or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A digest when it has an algorithm, otherwise a tag.
    pub fn parse(input: &str) -> Result<Reference> {
        if input.contains(':') {
            Digest::parse(input).map(Reference::Digest)
        } else {
            Tag::parse(input).map(Reference::Tag)
        }
    }

    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(digest) => Some(digest),
            Reference::Tag(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(tag) => tag.as_str(),
            Reference::Digest(digest) => digest.as_str(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reference> for String {
    fn from(reference: Reference) -> String {
        reference.as_str().to_string()
    }
}

impl From<Tag> for Reference {
    fn from(tag: Tag) -> Reference {
        Reference::Tag(tag)
    }
}

impl From<Digest> for Reference {
    fn from(digest: Digest) -> Reference {
        Reference::Digest(digest)
    }
}

/// Whether a reference's first path component names a registry, as Docker decides it.
pub fn is_registry_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// A registry host: DNS labels, an IPv4 address or a bracketed IPv6 address, then an
/// optional port. Hosts become directory names (`certs.d/<host>`) and keys in TOML and
/// YAML, so nothing else passes.
pub fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return false;
            }
            match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return after.is_empty(),
            }
        }
        None => match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name_ok = name.is_none_or(|n| n.len() <= 253 && n.split('.').all(label_ok));
    port_ok && name_ok
}

/// `localhost` or a loopback address, with an optional port. An address, not a prefix:
/// `127.evil.example` is a name anyone can point anywhere.
pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_names_parse() {
        assert!(Repository::parse("org/img").is_ok());
        assert!(Repository::parse("a/b.c_d-e/f").is_ok());
        for bad in [
            "", "Org/img", "org//img", "org/img/", "../x", "a/-b", "a/b-", "a b",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Tag::parse("v1.2.3").is_ok());
        assert!(Tag::parse("_x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            Reference::parse(&digest),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        assert!(Reference::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Reference::parse("sha256:../../x").is_err());
        assert!(Registry::parse("ghcr.io").is_ok());
        assert!(Registry::parse("[::1]:5000").is_ok());
        assert!(Registry::parse("a\nb.example").is_err());
        assert_eq!(
            Registry::parse("docker.io").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert!(Registry::parse("127.0.0.1:5000").unwrap().is_loopback());
    }

    #[test]
    fn loopback_is_an_address_not_a_prefix() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "127.evil.example",
            "localhost.evil.example",
            "10.0.0.1:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
