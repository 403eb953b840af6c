//! Image references, tags, and registry-prefix rewriting. Pure functions, no I/O. The
//! parts are the registry client's name types, so a reference parsed here is never
//! checked again downstream.

use anyhow::{bail, Result};
use std::fmt;

pub use crate::oci::name::{is_registry_host, DOCKER_HUB};
use crate::oci::{Digest, Reference, Registry, Repository, Tag};

pub const IMAGE_PREFIX: &str = "kubeopencode-agent-";

/// A parsed image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRef {
    pub registry: Registry,
    pub repository: Repository,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
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
        let context = |e: crate::oci::Error| anyhow::anyhow!("image reference '{input}': {e}");
        let (rest, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest).map_err(context)?)),
            None => (text, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => (
                &rest[..colon],
                Some(Tag::parse(&rest[colon + 1..]).map_err(context)?),
            ),
            _ => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if is_registry_host(first) => (first, path.to_string()),
            _ => (DOCKER_HUB, name.to_string()),
        };
        let registry = Registry::parse(registry).map_err(context)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let repository = Repository::parse(&repository).map_err(context)?;
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
        let (registry, path) = split_prefix(prefix)?;
        let repository = match &path {
            Some(path) => self.repository.under(path),
            None => Ok(self.repository.clone()),
        };
        Ok(ImageRef {
            registry,
            repository: repository
                .map_err(|e| anyhow::anyhow!("registry prefix '{}': {e}", prefix.escape_debug()))?,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag, else `latest`.
    pub fn pointer(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => Reference::Digest(digest.clone()),
            (None, Some(tag)) => Reference::Tag(tag.clone()),
            (None, None) => Reference::Tag(Tag::latest()),
        }
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
        Tag::parse(version).map_err(|e| anyhow::anyhow!("image reference '{version}': {e}"))?;
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

/// Whether `name` starts with a registry host (`host[:port]/...`).
/// A registry prefix (`registry.example.com/mirror`) as its host and repository path
/// (none for a bare host).
pub fn split_prefix(prefix: &str) -> Result<(Registry, Option<Repository>)> {
    let prefix = prefix.trim_end_matches('/');
    let (host, path) = prefix.split_once('/').unwrap_or((prefix, ""));
    if !is_registry_host(host) {
        bail!(
            "registry prefix '{}' does not start with a registry host; \
             write it like 'registry.example.com/mirror' or '127.0.0.1:5000/mirror'",
            prefix.escape_debug()
        );
    }
    let context =
        |e: crate::oci::Error| anyhow::anyhow!("registry prefix '{}': {e}", prefix.escape_debug());
    let registry = Registry::parse(host).map_err(context)?;
    let path = match path {
        "" => None,
        path => Some(Repository::parse(path).map_err(context)?),
    };
    Ok((registry, path))
}

pub fn has_host(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(first, _)| is_registry_host(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::name::is_valid_host;

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
        assert_eq!(r.digest.as_ref().map(|d| d.as_str()), Some(digest.as_str()));
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
