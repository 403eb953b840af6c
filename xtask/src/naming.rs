//! Image references, tags, and registry-prefix rewriting. Pure functions, no I/O.

use anyhow::{bail, Result};
use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";
pub const IMAGE_PREFIX: &str = "kubeopencode-agent-";

/// A parsed image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference the way Docker does: a first path component with a `.` or `:`
    /// or equal to `localhost` is a registry; otherwise the registry is Docker Hub and a
    /// single-component name lives under `library/`.
    pub fn parse(input: &str) -> Result<ImageRef> {
        let text = input.trim();
        if text.is_empty() {
            bail!("empty image reference");
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "image reference '{}' contains white space or control characters",
                input.escape_debug()
            );
        }
        let (rest, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                validate_digest(input, digest)?;
                (name, Some(digest.to_string()))
            }
            None => (text, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => {
                (&rest[..colon], Some(rest[colon + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(input, tag)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if is_registry_host(first) => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !is_valid_host(&registry) {
            bail!("image reference '{input}': {}", host_error(&registry));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(input, &repository)?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image under `prefix`, keeping the source repository path. This is how
    /// `AGENTKUBE_IMAGE_REGISTRY`-style mirrors lay images out.
    pub fn under_prefix(&self, prefix: &str) -> Result<ImageRef> {
        let prefix = prefix.trim_end_matches('/');
        let (host, path) = prefix.split_once('/').unwrap_or((prefix, ""));
        if !is_registry_host(host) {
            bail!(
                "registry prefix '{}' does not start with a registry host; \
                 write it like 'registry.example.com/mirror' or '127.0.0.1:5000/mirror'",
                prefix.escape_debug()
            );
        }
        if !is_valid_host(host) {
            bail!(
                "registry prefix '{}': {}",
                prefix.escape_debug(),
                host_error(host)
            );
        }
        let repository = if path.is_empty() {
            self.repository.clone()
        } else {
            format!("{path}/{}", self.repository)
        };
        validate_repository(prefix, &repository)?;
        Ok(ImageRef {
            registry: host.to_string(),
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag, else `latest`.
    pub fn pointer(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".to_string())
    }

    /// The name BuildKit matches a named build context against: Docker's familiar form
    /// (no `docker.io/library/`) with a trailing `:latest` removed.
    pub fn context_key(&self) -> String {
        let mut key = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(tag) = self.tag.as_deref().filter(|t| *t != "latest") {
            key.push(':');
            key.push_str(tag);
        }
        key
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

pub fn is_registry_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// A registry host as a reference names it: DNS labels, an IPv4 address or a bracketed
/// IPv6 address, then an optional port. Hosts become directory names (`certs.d/<host>`)
/// and keys in TOML and YAML, so nothing else passes.
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

fn host_error(host: &str) -> String {
    format!(
        "registry host '{}' is invalid; write a host name (letters, digits, '-' between dots), \
         an IPv4 address or a bracketed IPv6 address, optionally with :PORT",
        host.escape_debug()
    )
}

fn validate_digest(input: &str, digest: &str) -> Result<()> {
    let Some((algo, hex)) = digest.split_once(':') else {
        bail!("image reference '{input}': digest '{digest}' must look like sha256:<64 hex>");
    };
    let expected_len = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => bail!("image reference '{input}': unsupported digest algorithm '{algo}'"),
    };
    if hex.len() != expected_len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("image reference '{input}': digest must be {algo}:<{expected_len} hex digits>");
    }
    Ok(())
}

fn validate_tag(input: &str, tag: &str) -> Result<()> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid {
        bail!(
            "image reference '{input}': tag '{tag}' is invalid \
             (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
        );
    }
    Ok(())
}

fn validate_repository(input: &str, repository: &str) -> Result<()> {
    let valid_component = |c: &str| {
        !c.is_empty()
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if !repository.split('/').all(valid_component) {
        bail!(
            "image reference '{input}': repository '{repository}' is invalid \
             (lower-case letters, digits and '._-' separated by '/')"
        );
    }
    Ok(())
}

/// Where the agent images are published: `<registry>/<org>/kubeopencode-agent-<name>`.
#[derive(Debug, Clone)]
pub struct Publish {
    pub registry: String,
    pub org: String,
    pub version: String,
    pub release_tags: bool,
}

impl Publish {
    pub fn repository(&self, image: &str) -> String {
        let registry = self.registry.trim_end_matches('/');
        let org = self.org.trim_matches('/');
        if org.is_empty() {
            format!("{registry}/{IMAGE_PREFIX}{image}")
        } else {
            format!("{registry}/{org}/{IMAGE_PREFIX}{image}")
        }
    }

    /// Every tag the image gets, first one primary. With `release_tags`, a plain
    /// semantic version `v1.2.3` also gets `1.2.3`, `1.2`, `1` and `latest`.
    pub fn tags(&self) -> Result<Vec<String>> {
        let version = self.version.trim();
        validate_tag(version, version)?;
        let mut tags = vec![version.to_string()];
        if self.release_tags {
            let bare = version.strip_prefix('v').unwrap_or(version);
            let Ok(semver) = semver::Version::parse(bare) else {
                bail!(
                    "--release-tags needs a semantic version like v1.2.3, got '{version}'; \
                     drop --release-tags or pass --version v1.2.3"
                );
            };
            if semver.pre.is_empty() && semver.build.is_empty() {
                let (major, minor, patch) = (semver.major, semver.minor, semver.patch);
                for tag in [
                    format!("{major}.{minor}.{patch}"),
                    format!("{major}.{minor}"),
                    format!("{major}"),
                    "latest".to_string(),
                ] {
                    if !tags.contains(&tag) {
                        tags.push(tag);
                    }
                }
            }
        }
        Ok(tags)
    }

    /// Full references for `image`, validated.
    pub fn refs(&self, image: &str) -> Result<Vec<ImageRef>> {
        let repository = self.repository(image);
        self.tags()?
            .iter()
            .map(|tag| ImageRef::parse(&format!("{repository}:{tag}")))
            .collect()
    }

    /// The one reference `image` is known by: under `--version`, the first of `refs`.
    pub fn reference(&self, image: &str) -> Result<ImageRef> {
        Ok(self.refs(image)?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names_get_library() {
        let r = parse("debian:bookworm-slim");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.tag.as_deref(), Some("bookworm-slim"));
        assert_eq!(r.to_string(), "docker.io/library/debian:bookworm-slim");
    }

    #[test]
    fn registry_with_port_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("127.0.0.1:5000/org/img:v1@{digest}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "org/img");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        let untagged = parse("localhost:5000/img");
        assert_eq!(untagged.registry, "localhost:5000");
        assert_eq!(untagged.tag, None);
    }

    #[test]
    fn bad_references_are_rejected_with_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Upper/Case", "repository"),
            ("img:-bad", "tag"),
            ("img@sha256:abc", "digest"),
            ("img@md5:abc", "algorithm"),
            ("a b", "white space"),
            ("ghcr.io//x", "repository"),
        ] {
            let err = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn registry_hosts_are_names_addresses_and_ports_only() {
        for good in [
            "docker.io",
            "localhost:5000",
            "127.0.0.1:5000",
            "registry-1.example.com",
            "[::1]",
            "[fd00::1]:5000",
            "Reg.Example",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            "..",
            "a..b",
            ".example",
            "example.",
            "-a.example",
            "a-.example",
            "a_b.example",
            "a\"b.example",
            "a'b.example",
            "a\u{7f}.example",
            "a\\b.example",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "example.com:80:80",
            "[::1",
            "[::1]x",
            "[not-v6]:5000",
            "[::1]:",
            "fd00::1",
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(!is_valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn hostile_hosts_are_refused_in_references_and_prefixes() {
        for (bad, why) in [
            ("../../etc/x:1", "registry host '..' is invalid"),
            ("..:5000/x:1", "registry host '..:5000' is invalid"),
            (
                "a\"b.example/x:1",
                "registry host 'a\\\"b.example' is invalid",
            ),
            ("evil.example:80:80/x:1", "registry host"),
            ("a\u{1b}[2J.example/x:1", "control characters"),
            ("a.example/x:1\nkey: value", "control characters"),
        ] {
            let err = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err}");
        }
        let r = parse("[::1]:5000/a/b:1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("[::1]:5000", "a/b")
        );
        let base = parse("debian:12");
        for bad in [
            "../m",
            "reg.example:99999/m",
            "reg\"x.example/m",
            "a..b:1/m",
        ] {
            let err = base.under_prefix(bad).unwrap_err().to_string();
            assert!(err.contains("registry"), "{bad:?}: {err}");
        }
        let err = base.under_prefix("a\nb.example/m").unwrap_err().to_string();
        assert!(err.contains("a\\nb.example"), "{err}");
    }

    #[test]
    fn prefix_keeps_the_source_path() {
        let base = parse("debian:bookworm-slim");
        assert_eq!(
            base.under_prefix("registry.example.com/exo-mirror/")
                .unwrap()
                .to_string(),
            "registry.example.com/exo-mirror/library/debian:bookworm-slim"
        );
        assert_eq!(
            parse("ghcr.io/org/tool:1")
                .under_prefix("127.0.0.1:5000")
                .unwrap()
                .to_string(),
            "127.0.0.1:5000/org/tool:1"
        );
        let err = base.under_prefix("mirror").unwrap_err().to_string();
        assert!(err.contains("registry host"), "{err}");
    }

    #[test]
    fn context_keys_match_buildkit_normalisation() {
        assert_eq!(parse("debian:latest").context_key(), "debian");
        assert_eq!(
            parse("docker.io/library/debian:12").context_key(),
            "debian:12"
        );
        assert_eq!(
            parse("ghcr.io/kubeopencode/kubeopencode-agent-opencode:latest").context_key(),
            "ghcr.io/kubeopencode/kubeopencode-agent-opencode"
        );
        assert_eq!(
            parse("127.0.0.1:5000/o/i:v1").context_key(),
            "127.0.0.1:5000/o/i:v1"
        );
    }

    fn publish(version: &str, release_tags: bool) -> Publish {
        Publish {
            registry: "ghcr.io".into(),
            org: "kubeopencode".into(),
            version: version.into(),
            release_tags,
        }
    }

    #[test]
    fn agent_refs_follow_the_documented_pattern() {
        let refs = publish("latest", false).refs("devbox").unwrap();
        assert_eq!(
            refs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["ghcr.io/kubeopencode/kubeopencode-agent-devbox:latest"]
        );
        let flat = Publish {
            org: String::new(),
            ..publish("v1", false)
        };
        assert_eq!(flat.repository("x"), "ghcr.io/kubeopencode-agent-x");
    }

    #[test]
    fn release_tags_expand_semver() {
        assert_eq!(
            publish("v1.2.3", true).tags().unwrap(),
            ["v1.2.3", "1.2.3", "1.2", "1", "latest"]
        );
        // A pre-release never moves the floating tags.
        assert_eq!(
            publish("v1.2.3-rc.1", true).tags().unwrap(),
            ["v1.2.3-rc.1"]
        );
        assert_eq!(
            publish("1.0.0", true).tags().unwrap(),
            ["1.0.0", "1.0", "1", "latest"]
        );
        let err = publish("nightly", true).tags().unwrap_err().to_string();
        assert!(err.contains("semantic version"), "{err}");
        assert!(publish("bad tag", false).tags().is_err());
    }
}
