//! `--sign` and `--sbom`: signatures and SBOM attestations of what a command pushed,
//! through cosign, in its own format and tags (`sha256-<hex>.sig`, `.att`) beside the
//! image. Always by digest: a tag can move between the push and the signature.
//!
//! Secrets stay out of sight: a key file's password reaches cosign only through the
//! inherited `COSIGN_PASSWORD`, command lines carry paths and URIs, and cosign's own
//! output is shown only when it fails, as one line.

use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cli::SignArgs;
use crate::naming::ImageRef;
use crate::oci::{Digest, Reference, Registries};
use crate::sbom::{self, cosign_tag};
use crate::text::{error_line, shell_words};

/// How cosign signs.
#[derive(Debug, Clone)]
enum Identity {
    /// A key file or KMS URI, with a certificate (and chain) from a site's own CA.
    Key {
        key: String,
        cert: Option<PathBuf>,
        chain: Option<PathBuf>,
    },
    /// A Fulcio certificate for the ambient OIDC identity.
    Keyless,
}

/// What to do after a push, checked before it.
#[derive(Debug, Clone)]
pub struct Trust {
    pub sign: bool,
    pub sbom: bool,
    identity: Identity,
    tlog: bool,
    insecure: Vec<String>,
}

/// How the command that carries `--sign` writes to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushing {
    No,
    ByDigest,
    Yes,
}

impl SignArgs {
    /// The signing asked for, with every flag and file checked; None when none is.
    pub fn trust(&self, pushing: Pushing, insecure: &[String]) -> Result<Option<Trust>> {
        if !self.sign && !self.sbom {
            if self.sign_key.is_some() || self.sign_keyless || self.sign_tlog {
                bail!("--sign-key, --sign-keyless and --sign-tlog say how to sign: add --sign or --sbom");
            }
            return Ok(None);
        }
        let flag = if self.sign { "--sign" } else { "--sbom" };
        match pushing {
            Pushing::No => bail!("{flag} signs what is pushed: add --push"),
            Pushing::ByDigest => bail!(
                "{flag} with --by-digest: the images are signed once merged, so pass {flag} to \
                 `images merge` instead"
            ),
            Pushing::Yes => {}
        }
        let identity = match (&self.sign_key, self.sign_keyless) {
            (Some(key), false) => Identity::Key {
                key: checked_key(key)?,
                cert: self
                    .sign_cert
                    .as_deref()
                    .map(|p| checked_cert("--sign-cert", p))
                    .transpose()?,
                chain: self
                    .sign_cert_chain
                    .as_deref()
                    .map(|p| checked_cert("--sign-cert-chain", p))
                    .transpose()?,
            },
            (None, true) => Identity::Keyless,
            (None, false) => bail!(
                "{flag} needs a signer: --sign-key FILE|KMS-URI (a file's password in \
                 COSIGN_PASSWORD) or --sign-keyless"
            ),
            (Some(_), true) => bail!("--sign-key and --sign-keyless: pass one of them"),
        };
        Ok(Some(Trust {
            sign: self.sign,
            sbom: self.sbom,
            identity,
            tlog: self.sign_tlog || self.sign_keyless,
            insecure: insecure.to_vec(),
        }))
    }
}

fn is_kms(key: &str) -> bool {
    key.contains("://")
}

/// A KMS URI as given, or a readable PEM private key file (its absolute path).
fn checked_key(key: &str) -> Result<String> {
    if is_kms(key) {
        return Ok(key.to_string());
    }
    let path = Path::new(key);
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "--sign-key {key}: cannot read it ({e}); pass a cosign key file \
             (`cosign generate-key-pair`) or a KMS URI"
        )
    })?;
    if !text.contains("PRIVATE KEY-----") {
        bail!("--sign-key {key}: no PEM private key in it; pass a cosign key file (`cosign generate-key-pair`) or a KMS URI");
    }
    Ok(absolute(path)?.display().to_string())
}

fn checked_cert(flag: &str, path: &Path) -> Result<PathBuf> {
    crate::text::read_ca_pem(flag, path)?;
    absolute(path)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// An image that was pushed, or is already there (`fresh: false`: signed and attested
/// only where its signature or SBOM is missing, so a re-run after a failure heals it).
#[derive(Debug, Clone)]
pub struct Subject {
    pub image: String,
    /// The repository, with no tag.
    pub repository: ImageRef,
    pub digest: Digest,
    pub fresh: bool,
}

impl Subject {
    pub fn new(image: &str, tag: &str, digest: &str, fresh: bool) -> Result<Subject> {
        let mut repository = ImageRef::parse(tag)?;
        repository.tag = None;
        repository.digest = None;
        Ok(Subject {
            image: image.to_string(),
            repository,
            digest: Digest::parse(digest)?,
            fresh,
        })
    }

    fn at(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.repository)
    }
}

/// One subject's work, found registry-side.
struct Work<'a> {
    subject: &'a Subject,
    sign: bool,
    sboms: Vec<(String, Digest)>,
    plain_http: bool,
}

const REDACTED: &str = "# COSIGN_PASSWORD: read by cosign from the environment, never shown";

impl Trust {
    /// Checks, before anything is pushed, that cosign (and syft) run and that the key
    /// opens with COSIGN_PASSWORD: `cosign public-key` decrypts it and writes nothing.
    pub fn preflight(&self) -> Result<()> {
        let version = Command::new("cosign")
            .arg("version")
            .stdin(Stdio::null())
            .output();
        if !version.is_ok_and(|o| o.status.success()) {
            bail!("--sign/--sbom need cosign, which does not run here: run .ci/provision or install cosign 2.5");
        }
        if self.sbom {
            sbom::check_syft()?;
        }
        if let Identity::Key { key, .. } = &self.identity {
            let out = Command::new("cosign")
                .args(["public-key", "--key", key])
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                let why = error_line(&out.stderr);
                let hint = if is_kms(key) {
                    "check the URI and the KMS credentials"
                } else if std::env::var_os("COSIGN_PASSWORD").is_none() {
                    "COSIGN_PASSWORD is not set: set it to the key's password"
                } else {
                    "COSIGN_PASSWORD must hold its password"
                };
                bail!("--sign-key {key}: cosign cannot use it ({why}); {hint}");
            }
        }
        Ok(())
    }

    fn relaxed(&self, at: &ImageRef) -> bool {
        let host = at.registry.as_str();
        at.registry.is_loopback() || self.insecure.iter().any(|h| h == host)
    }

    fn flags(&self, at: &ImageRef) -> Vec<String> {
        let mut args = vec!["--yes".to_string()];
        if let Identity::Key { key, cert, chain } = &self.identity {
            args.extend(["--key".to_string(), key.clone()]);
            if let Some(cert) = cert {
                args.extend(["--certificate".into(), cert.display().to_string()]);
            }
            if let Some(chain) = chain {
                args.extend(["--certificate-chain".into(), chain.display().to_string()]);
            }
            if !self.tlog {
                args.extend(without_tlog(cosign_has_signing_config()));
            }
        }
        if self.relaxed(at) {
            args.push("--allow-insecure-registry".into());
        }
        args
    }

    fn sign_args(&self, at: &ImageRef, reference: &str) -> Vec<String> {
        let mut args = vec!["sign".to_string(), "--recursive".into()];
        args.extend(self.flags(at));
        args.push(reference.to_string());
        args
    }

    fn attest_args(&self, at: &ImageRef, reference: &str, predicate: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["attest", "--type", "spdxjson", "--predicate"]
            .map(String::from)
            .to_vec();
        args.push(predicate.display().to_string());
        args.extend(self.flags(at));
        args.push(reference.to_string());
        args
    }

    /// What `--dry-run` prints: the commands that would run after the push, with
    /// placeholders for digests not known yet.
    pub fn planned(&self, images: &[(String, String)], out: &Path) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        if matches!(&self.identity, Identity::Key { key, .. } if !is_kms(key)) {
            lines.push(REDACTED.to_string());
        }
        for (image, tag) in images {
            let at = Subject::new(image, tag, &format!("sha256:{}", "0".repeat(64)), true)?;
            let repository = &at.repository;
            if self.sign {
                let reference = format!("{repository}@<index digest>");
                lines.push(cosign_line(&self.sign_args(repository, &reference)));
            }
            if self.sbom {
                let reference = format!("{repository}@<platform digest>");
                let file = sbom::file(out, image, "<os>-<arch>");
                let scan = sbom::syft_args(&reference, &file);
                lines.push(format!("syft {}", shell_words(&scan)));
                lines.push(cosign_line(
                    &self.attest_args(repository, &reference, &file),
                ));
            }
        }
        Ok(lines)
    }

    /// Signs and attests `subjects`, after their push. SBOM files go to `out/sbom/`.
    pub fn run(&self, ctx: &crate::context::Ctx, subjects: &[Subject], out: &Path) -> Result<()> {
        let work = ctx.block_on(self.survey(&ctx.registries, subjects))?;
        for w in work {
            let subject = w.subject;
            let repository = &subject.repository;
            if w.sign {
                let reference = subject.at(&subject.digest);
                self.cosign(&self.sign_args(repository, &reference), &reference)?;
                eprintln!("==> signed {reference} and every manifest in it");
            }
            for (platform, digest) in &w.sboms {
                let reference = subject.at(digest);
                let file = sbom::file(out, &subject.image, &platform.replace('/', "-"));
                sbom::generate(&reference, &file, self.relaxed(repository), w.plain_http)?;
                self.cosign(&self.attest_args(repository, &reference, &file), &reference)?;
                eprintln!(
                    "==> SBOM of {} {platform} attached to {reference} ({})",
                    subject.image,
                    file.display()
                );
            }
        }
        Ok(())
    }

    /// What each subject needs: for one already there, only what is missing.
    async fn survey<'a>(
        &self,
        registries: &Registries,
        subjects: &'a [Subject],
    ) -> Result<Vec<Work<'a>>> {
        let mut work = Vec::new();
        for subject in subjects {
            let client = registries.get(&subject.repository.registry).await?;
            let repository = &subject.repository.repository;
            let missing = |digest: Digest, suffix: &'static str| {
                let client = client.clone();
                async move {
                    let tag = Reference::Tag(cosign_tag(&digest, suffix)?);
                    anyhow::Ok(client.head_manifest(repository, &tag).await?.is_none())
                }
            };
            // cosign 2 writes a `.sig` tag, cosign 3 a bundle referrer: either means signed.
            let remote = crate::trust::image::Remote {
                registry: &client,
                repository,
            };
            let signed = crate::trust::image::looks_signed(&remote, &subject.digest);
            let sign = self.sign && (subject.fresh || !signed.await?);
            let mut sboms = Vec::new();
            if self.sbom {
                for (platform, digest) in
                    sbom::platforms(&client, repository, &subject.digest).await?
                {
                    if subject.fresh || missing(digest.clone(), "att").await? {
                        sboms.push((platform, digest));
                    }
                }
            }
            work.push(Work {
                subject,
                sign,
                sboms,
                plain_http: client.plain_http(),
            });
        }
        Ok(work)
    }

    fn cosign(&self, args: &[String], reference: &str) -> Result<()> {
        let mut command = Command::new("cosign");
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Keyless away from CI prints a URL to open in a browser: let it through.
        let keyless = matches!(self.identity, Identity::Keyless);
        command.stderr(if keyless {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
        let out = command.output().map_err(|e| {
            anyhow!("cannot run cosign ({e}): run .ci/provision or install cosign 2.5")
        })?;
        if !out.status.success() {
            bail!(
                "cosign {} {reference} failed: {}; it was pushed but not signed, and a re-run \
                 signs what is still unsigned",
                args[0],
                error_line(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Whether this cosign signs through a signing config (cosign 3), where
/// `--tlog-upload=false` is refused; asked once, from its help (Debian's cosign reports
/// its version as "devel").
fn cosign_has_signing_config() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        Command::new("cosign")
            .args(["sign", "--help"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--use-signing-config"))
    })
}

/// A signing config naming no transparency log, Fulcio or timestamp authority: what
/// cosign 3 takes instead of `--tlog-upload=false` (sigstore/cosign#4778, #5043).
const NO_TLOG_SIGNING_CONFIG: &str = r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","rekorTlogConfig":{},"tsaConfig":{}}"#;

/// The flags that keep a key's signature out of Rekor, for cosign 2 or cosign 3.
fn without_tlog(signing_config: bool) -> Vec<String> {
    if !signing_config {
        return vec!["--tlog-upload=false".into()];
    }
    static FILE: std::sync::OnceLock<Option<tempfile::TempPath>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let file = tempfile::Builder::new()
            .prefix("cosign-signing-config-")
            .suffix(".json")
            .tempfile()
            .ok()?;
        std::fs::write(file.path(), NO_TLOG_SIGNING_CONFIG).ok()?;
        Some(file.into_temp_path())
    });
    match file {
        Some(path) => vec!["--signing-config".into(), path.display().to_string()],
        None => vec!["--tlog-upload=false".into()],
    }
}

fn cosign_line(args: &[String]) -> String {
    format!("cosign {}", shell_words(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: Option<&str>) -> SignArgs {
        SignArgs {
            sign: true,
            sign_key: key.map(String::from),
            ..SignArgs::default()
        }
    }

    #[test]
    fn sign_needs_a_push_and_a_signer() {
        let kms = args(Some("awskms:///alias/release"));
        let err = |a: &SignArgs, p| a.trust(p, &[]).unwrap_err().to_string();
        assert_eq!(
            err(&kms, Pushing::No),
            "--sign signs what is pushed: add --push"
        );
        assert!(err(&kms, Pushing::ByDigest).contains("`images merge`"));
        assert!(err(&args(None), Pushing::Yes).contains("needs a signer"));
        let missing = err(&args(Some("/nonexistent/cosign.key")), Pushing::Yes);
        assert!(missing.starts_with("--sign-key /nonexistent/cosign.key: cannot read it"));
        let none = SignArgs {
            sign_keyless: true,
            ..SignArgs::default()
        };
        assert!(err(&none, Pushing::Yes).contains("add --sign or --sbom"));
        assert!(SignArgs::default()
            .trust(Pushing::No, &[])
            .unwrap()
            .is_none());
    }

    #[test]
    fn cosign_3_keeps_a_key_signature_out_of_rekor_with_a_signing_config() {
        assert_eq!(without_tlog(false), ["--tlog-upload=false"]);
        let flags = without_tlog(true);
        assert_eq!(flags[0], "--signing-config");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&flags[1]).unwrap()).unwrap();
        assert_eq!(config["rekorTlogConfig"], serde_json::json!({}));
        assert!(config.get("fulcio").is_none() && config.get("caUrls").is_none());
    }

    #[test]
    fn commands_are_by_digest_and_carry_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cosign.key");
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nc2VjcmV0\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .unwrap();
        let trust = SignArgs {
            sbom: true,
            ..args(Some(key.to_str().unwrap()))
        }
        .trust(Pushing::Yes, &["r.corp.example".into()])
        .unwrap()
        .unwrap();
        let images = [("base".to_string(), "r.corp.example/o/base:v1".to_string())];
        let lines = trust.planned(&images, Path::new("/out")).unwrap();
        assert_eq!(lines[0], REDACTED);
        assert_eq!(
            lines[1],
            format!(
                "cosign sign --recursive --yes --key {} --tlog-upload=false \
                 --allow-insecure-registry 'r.corp.example/o/base@<index digest>'",
                key.display()
            )
        );
        assert!(
            lines[2].starts_with("syft scan 'registry:r.corp.example/o/base@<platform digest>'")
        );
        assert!(lines[3].starts_with("cosign attest --type spdxjson --predicate"));
        assert!(lines.iter().all(|l| !l.contains("c2VjcmV0")));
    }
}
