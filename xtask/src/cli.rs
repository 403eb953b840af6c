//! Every command-line flag, in one place.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::naming::Publish;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, check and mirror the KubeOpenCode agent images"
)]
pub struct Cli {
    /// The project checkout to work on (default: the one this xtask was built from).
    #[arg(long, global = true, env = "XTASK_PROJECT_DIR", hide = true)]
    pub project_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Container images: list, render, build, mirror, retag.
    #[command(subcommand)]
    Images(Box<ImagesCommand>),
    /// Benchmarks that print our numbers beside a baseline's.
    #[command(subcommand)]
    Bench(Box<BenchCommand>),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The mirror against skopeo, and a big layer against a raw GET→PUT, on loopback registries.
    Mirror(BenchMirrorArgs),
    /// A cold build, a warm no-op, and bare `docker buildx bake` on the same bake file.
    Build(BenchBuildArgs),
}

#[derive(Debug, Args)]
pub struct BenchBuildArgs {
    /// How many times to repeat the warm measurements (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Args)]
pub struct BenchMirrorArgs {
    /// Multi-arch images in the corpus.
    #[arg(long, default_value_t = 14)]
    pub images: usize,
    /// Size of the big layer, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub big_layer_mib: u64,
    /// --jobs for the mirror.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// How many times to repeat every measurement.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images in the catalog (agents/*/image.toml).
    List(ListArgs),
    /// Render Dockerfiles and build contexts without building.
    Render(RenderArgs),
    /// Render and build images with docker buildx.
    Build(Box<BuildArgs>),
    /// Join the per-platform `build --by-digest` records of every runner into each
    /// image's index and tags, registry-side.
    Merge(MergeArgs),
    /// Copy images under a registry prefix for air-gapped clusters.
    Mirror(Box<MirrorArgs>),
    /// Add tags to a manifest already in a registry, without moving layers.
    Retag(RetagArgs),
    /// Measure built images per platform against their size budgets.
    Size(SizeArgs),
    /// Run the convention and declared checks against built images.
    Verify(VerifyArgs),
    /// List the pinned downloads of the tools locks, or fetch them for an artifact mirror.
    Tools(ToolsArgs),
    /// Scaffold a custom executor under agents/NAME/ that builds and verifies as it is.
    New(NewArgs),
    /// Print the packages an image's SBOM attestation lists (what `build --sbom` attached).
    Sbom(SbomArgs),
    /// List each image's base images and their pinned digests; --update pins them anew.
    Bases(BasesArgs),
}

#[derive(Debug, Args)]
pub struct SbomArgs {
    /// A catalog image (published under the naming flags) or any image reference.
    pub image: String,
    /// The platform whose SBOM to read (default: the only one, else linux/amd64).
    #[arg(long)]
    pub platform: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct BasesArgs {
    /// Images whose bases to show (default: all).
    pub images: Vec<String>,
    /// Resolve every base's tag again and write `name:tag@sha256:…` into image.toml.
    #[arg(long)]
    pub update: bool,
    /// Resolve through a mirror: `debian:bookworm-slim` is read from
    /// PREFIX/library/debian:bookworm-slim.
    #[arg(long, env = "BASE_REGISTRY", value_name = "PREFIX")]
    pub base_registry: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The image name: lower-case letters, digits and '-'.
    pub name: String,
    /// What to build on: a catalog image (as its parent) or a minimal busybox on scratch.
    #[arg(long, value_enum, default_value = "devbox")]
    pub from: NewFrom,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NewFrom {
    Devbox,
    Attach,
    Scratch,
}

#[derive(Debug, Args)]
pub struct ToolsArgs {
    /// Images whose locks to read (default: all).
    pub images: Vec<String>,
    /// Download every pinned artifact, verify it, and lay it out as DIR/<host>/<path>,
    /// which is what `build --artifact-mirror` reads.
    #[arg(long, value_name = "DIR")]
    pub fetch: Option<PathBuf>,
    /// With --fetch: download from this artifact mirror instead of the upstream hosts.
    #[arg(long, value_name = "URL", requires = "fetch")]
    pub from: Option<String>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SizeArgs {
    /// Catalog images to measure (default: all), as published under the naming flags.
    pub images: Vec<String>,
    /// Measure any image by reference instead (repeatable); no budget applies.
    #[arg(long = "ref", value_name = "REF")]
    pub refs: Vec<String>,
    /// Read the local Docker engine's image store instead of the registry.
    #[arg(long)]
    pub local: bool,
    /// Skip the uncompressed sizes, which cost a download of every layer.
    #[arg(long)]
    pub compressed_only: bool,
    /// How many of each image's largest layers to list.
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Catalog images to check (default: all), as published under the naming flags.
    pub images: Vec<String>,
    /// Check any image by reference instead, as the role given by --role.
    #[arg(long = "ref", value_name = "REF", conflicts_with = "images")]
    pub reference: Option<String>,
    /// With --ref: the role whose conventions apply.
    #[arg(long, value_enum, default_value = "executor", requires = "reference")]
    pub role: RoleArg,
    /// The init image for the two-container check (default: the catalog's init image
    /// under the naming flags).
    #[arg(long, value_name = "REF")]
    pub tools_image: Option<String>,
    /// Run the containers for this platform (default: the engine's own).
    #[arg(long)]
    pub platform: Option<String>,
    /// Check the local engine's copies as they are, without pulling them first.
    #[arg(long)]
    pub local: bool,
    /// Images checked at once (default: the machine's CPUs); each image's checks run in
    /// order, and the report keeps the order the images were named in.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Executor,
    Init,
    Other,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct PublishArgs {
    /// Registry the images are published to.
    #[arg(long, env = "IMG_REGISTRY", default_value = "ghcr.io")]
    pub registry: String,
    /// Organisation (path) under the registry.
    #[arg(long, env = "IMG_ORG", default_value = "kubeopencode")]
    pub org: String,
    /// Image tag; a semantic version like v1.2.3 for releases. Not read from $VERSION,
    /// which CI systems set for their own purposes; the Makefiles pass it explicitly.
    #[arg(long, default_value = "latest")]
    pub version: String,
    /// Also tag X.Y.Z, X.Y, X and latest (needs --version vX.Y.Z; skipped for pre-releases).
    #[arg(long)]
    pub release_tags: bool,
}

impl PublishArgs {
    pub fn publish(&self) -> Publish {
        Publish {
            registry: self.registry.clone(),
            org: self.org.clone(),
            version: self.version.clone(),
            release_tags: self.release_tags,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct RenderArgs {
    /// Images to render (default: all).
    pub images: Vec<String>,
    /// Output folder (default: target/images).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Pull every base image from this mirror prefix, e.g. registry.example.com/mirror.
    #[arg(long, env = "BASE_REGISTRY")]
    pub base_registry: Option<String>,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub render: RenderArgs,
    /// Target platforms, comma separated (default: each image's own list).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Push to the registry.
    #[arg(long, conflicts_with = "load")]
    pub push: bool,
    /// Load into the local Docker image store.
    #[arg(long)]
    pub load: bool,
    /// The buildx builder to use (default: the current one).
    #[arg(long)]
    pub builder: Option<String>,
    /// A CA bundle (PEM) for downloads inside the build, passed as a BuildKit secret.
    #[arg(long, env = "CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Fetch pinned tool downloads from this mirror: URL/<host>/<path>.
    #[arg(long, env = "ARTIFACT_MIRROR")]
    pub artifact_mirror: Option<String>,
    /// Alpine package mirror for Alpine-based images: replaces the repositories' host
    /// and path up to `/alpine/`, e.g. https://mirror.example.com/alpine.
    #[arg(long, env = "APK_MIRROR")]
    pub apk_mirror: Option<String>,
    /// npm registry for npm-sourced artifacts (default: `npm config get registry`).
    #[arg(long, env = "NPM_REGISTRY")]
    pub npm_registry: Option<String>,
    /// Extra BuildKit secret, as for buildx: id=NAME,src=FILE or id=NAME,env=VAR.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// URL recorded in org.opencontainers.image.source (default: the git remote).
    #[arg(long, env = "IMG_SOURCE")]
    pub source_url: Option<String>,
    /// BuildKit cache to import, per image (repeatable): `{image}` becomes the image's
    /// repository, e.g. type=registry,ref={image}:buildcache.
    #[arg(long, value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// BuildKit cache to export, per image (repeatable), e.g.
    /// type=registry,ref={image}:buildcache,mode=max.
    #[arg(long, value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Attach a provenance attestation in this mode (min or max).
    #[arg(long, value_name = "MODE", value_parser = ["min", "max"])]
    pub provenance: Option<String>,
    /// buildx progress output: auto, plain, tty, quiet.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Print the plan (command line and bake file) without running docker.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run, print the plan as one JSON document; otherwise print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// After the build, run `images size` and `images verify` on what was built (needs
    /// --push or --load); fails the build when either fails.
    #[arg(long)]
    pub check: bool,
    /// Build every image, even those whose tags already carry its input digest.
    #[arg(long)]
    pub force: bool,
    /// Run every build step again, taking nothing from the build cache (implies --force).
    #[arg(long)]
    pub no_cache: bool,
    /// With --push: push each image by digest with no tag, and write one JSON record per
    /// image and platform to DIR for `images merge`.
    #[arg(long, value_name = "DIR", requires = "push")]
    pub by_digest: Option<PathBuf>,
    #[command(flatten)]
    pub trust: SignArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Signing and SBOM attestations of what a command pushes, through cosign and syft.
#[derive(Debug, Args, Clone, Default)]
pub struct SignArgs {
    /// Sign every index and platform manifest pushed, by digest (cosign --recursive).
    #[arg(long)]
    pub sign: bool,
    /// Attach an SPDX SBOM (syft) to every platform image pushed, as a signed cosign
    /// attestation (`--type spdxjson`).
    #[arg(long)]
    pub sbom: bool,
    /// The signing key: a cosign key file (its password in COSIGN_PASSWORD) or a KMS URI
    /// (awskms://, gcpkms://, azurekms://, hashivault://).
    #[arg(long, value_name = "FILE|URI", conflicts_with = "sign_keyless")]
    pub sign_key: Option<String>,
    /// Keyless: a short-lived Fulcio certificate for the OIDC identity (in GitHub
    /// Actions, the workflow's id-token), logged in Rekor.
    #[arg(long)]
    pub sign_keyless: bool,
    /// With --sign-key: the key's certificate from a site's own CA (PEM).
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
    /// With --sign-cert: the chain up to that CA's root (PEM).
    #[arg(long, value_name = "FILE", requires = "sign_cert")]
    pub sign_cert_chain: Option<PathBuf>,
    /// With --sign-key: also record the signatures in the Rekor transparency log
    /// (off by default: an air-gapped site has no Rekor; keyless always records).
    #[arg(long)]
    pub sign_tlog: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The --by-digest folders of every runner, then optionally the images to merge
    /// (default: every image with records in them); each comes with its parents.
    #[arg(required = true, value_name = "DIRS... [IMAGES...]")]
    pub paths: Vec<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: SignArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Flags every registry-facing command shares.
#[derive(Debug, Args, Clone)]
pub struct RegistryArgs {
    /// A registry host to reach without TLS verification (loopback is always allowed).
    #[arg(long = "insecure", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Stop the whole run after this long (e.g. 30m, 2h), whatever the network does.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<humantime::Duration>,
    /// At most N requests per second to HOST (as references write it; may be fractional,
    /// e.g. docker.io=0.5; repeatable). Beats a list's `[limits."HOST"]`; docker.io
    /// defaults to 5.
    #[arg(long, value_name = "HOST=N")]
    pub max_requests_per_second: Vec<String>,
    /// At most N requests to HOST awaiting their answer at once (repeatable); bodies
    /// streaming after the answer are bounded by --jobs instead. Beats a list's
    /// `[limits."HOST"]`; docker.io defaults to 3.
    #[arg(long, value_name = "HOST=N")]
    pub max_concurrent: Vec<String>,
}

/// Who must have signed an image before it is mirrored, saved or loaded (cosign's
/// signatures, checked offline). A list's `[verify]` table, or an image's own, wins.
#[derive(Debug, Args, Clone, Default)]
pub struct TrustArgs {
    /// Accept signatures by this public key (PEM, as `cosign generate-key-pair` writes
    /// it; repeatable, any one will do).
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<PathBuf>,
    /// Accept certificates for this identity (an email or URI subject alternative name).
    #[arg(
        long,
        value_name = "SAN",
        conflicts_with = "certificate_identity_regexp"
    )]
    pub certificate_identity: Option<String>,
    /// Accept certificates whose identity matches this regular expression (whole value).
    #[arg(long, value_name = "REGEXP")]
    pub certificate_identity_regexp: Option<String>,
    /// The OIDC issuer the certificate must name.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "certificate_oidc_issuer_regexp"
    )]
    pub certificate_oidc_issuer: Option<String>,
    /// The OIDC issuer must match this regular expression (whole value).
    #[arg(long, value_name = "REGEXP")]
    pub certificate_oidc_issuer_regexp: Option<String>,
    /// The CA certificates (PEM) signing certificates must chain to: a site's own CA,
    /// checked now. Excludes --trusted-root.
    #[arg(long, value_name = "FILE")]
    pub certificate_chain: Option<PathBuf>,
    /// sigstore's trusted_root.json, for keyless signatures offline: the certificate
    /// must chain to one of its Fulcio CAs, and carry a Rekor entry signed by one of its
    /// logs, at whose time the certificate was valid. Needs --certificate-identity and
    /// --certificate-oidc-issuer. SCTs and timestamp authorities are not checked.
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    /// Which digests must carry a signature: the copied one or else every platform
    /// manifest (`either`), the copied one (`index`), every platform manifest
    /// (`platforms`), or all of them (`all`).
    #[arg(long, value_name = "RULE")]
    pub signed: Option<crate::trust::Shape>,
}

impl TrustArgs {
    pub fn spec(&self) -> crate::trust::PolicySpec {
        crate::trust::PolicySpec {
            keys: self.verify_keys.clone(),
            identity: self.certificate_identity.clone(),
            identity_regexp: self.certificate_identity_regexp.clone(),
            issuer: self.certificate_oidc_issuer.clone(),
            issuer_regexp: self.certificate_oidc_issuer_regexp.clone(),
            certificate_chain: self.certificate_chain.clone(),
            trusted_root: self.trusted_root.clone(),
            signed: self.signed,
            skip: None,
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MirrorArgs {
    #[command(subcommand)]
    pub action: Option<MirrorAction>,
    #[command(flatten)]
    pub copy: MirrorCopyArgs,
}

#[derive(Debug, Subcommand)]
pub enum MirrorAction {
    /// Write the images to one OCI-layout tar, to carry across the air gap.
    Save(MirrorSaveArgs),
    /// Push an OCI image layout (a tar, or a directory) into a registry.
    Load(MirrorLoadArgs),
    /// Delete the tags under PREFIX that the lists no longer select (a dry run unless --yes).
    Prune(MirrorPruneArgs),
}

/// What `mirror` and `mirror save` take: lists, and images named on the command line.
#[derive(Debug, Args)]
pub struct MirrorSelection {
    /// Groups under mirrors/ (kubeopencode, agentkube, base, build-time) or list files (default: all groups).
    pub lists: Vec<String>,
    /// One more image (repeatable).
    #[arg(long = "image", value_name = "REF")]
    pub images: Vec<String>,
    /// The tags of each --image REPO (named without a tag) in this semver range, e.g.
    /// ">=0.1.3, <0.2.0"; a `v` prefix is accepted, pre-releases only if the range names one.
    #[arg(long, value_name = "RANGE")]
    pub tags_semver: Option<String>,
}

#[derive(Debug, Args)]
pub struct MirrorCopyArgs {
    #[command(flatten)]
    pub select: MirrorSelection,
    /// Destination prefix, e.g. registry.example.com/exo-mirror.
    #[arg(long)]
    pub to: Option<String>,
    /// Put images under PREFIX/<source host>/... so registries never collide.
    #[arg(long)]
    pub keep_host: bool,
    /// Copy only these platforms (rewrites indexes, so their digests change).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Images copied at once (blobs: twice as many). More rarely helps: on loopback the
    /// registries' CPU is the limit, and every stream in flight holds a few buffers.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Write the mapping, agentkube env, containerd hosts.toml, OpenShift mirror sets and Helm values here.
    #[arg(long, value_name = "DIR")]
    pub write_config: Option<PathBuf>,
    /// With --write-config: the CA (PEM) that signed the mirror's certificate. It is
    /// copied beside each hosts.toml and named there as `ca`.
    #[arg(long, value_name = "FILE", requires = "write_config")]
    pub mirror_ca: Option<PathBuf>,
    /// With --write-config: the OpenShift mirror sets say `mirrorSourcePolicy:
    /// NeverContactSource`, so nodes never fall back to the source (a strict air gap).
    #[arg(long, requires = "write_config")]
    pub never_contact_source: bool,
    /// Print what would be copied, from HEAD requests only.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or the --dry-run plan) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct MirrorSaveArgs {
    #[command(flatten)]
    pub select: MirrorSelection,
    /// The archive to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Write only what this earlier bundle (whole, split or itself incremental) lacks;
    /// `load` then needs it loaded at the destination first.
    #[arg(long, value_name = "PREVIOUS")]
    pub since: Option<PathBuf>,
    /// Split the tar into OUT.part-001, OUT.part-002… of at most SIZE (1MiB or more;
    /// 500M, 2GiB, bytes), listed with their sha256 in OUT.parts.json.
    #[arg(long, value_name = "SIZE")]
    pub max_part_size: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct MirrorLoadArgs {
    /// An OCI image layout: a tar in any member order (from `mirror save`, skopeo,
    /// oras, crane, `tar` of a layout folder...) or a layout folder. A split bundle by
    /// its first part or its OUT.parts.json.
    pub bundle: PathBuf,
    /// Destination prefix, e.g. registry.example.com/exo-mirror.
    #[arg(long)]
    pub to: String,
    /// Put images under PREFIX/<source host>/...
    #[arg(long)]
    pub keep_host: bool,
    /// Load every image of the bundle into PREFIX/REPO, keeping its tag; needed when the
    /// bundle names an image by tag only, or not at all (skopeo's `oci-archive:FILE:TAG`).
    #[arg(long, value_name = "REPO")]
    pub repository: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct MirrorPruneArgs {
    #[command(flatten)]
    pub select: MirrorSelection,
    /// The prefix the mirror copies to, e.g. registry.example.com/exo-mirror.
    #[arg(long, value_name = "PREFIX")]
    pub to: String,
    /// The images are under PREFIX/<source host>/..., as `mirror --keep-host` puts them.
    #[arg(long)]
    pub keep_host: bool,
    /// Also every repository under PREFIX that the selected lists do not map, found
    /// through the registry's /v2/_catalog: all its tags go. Name every list the mirror
    /// copies, or the others' repositories count as unmapped.
    #[arg(long)]
    pub unmapped: bool,
    /// Delete; without it, only print what would be deleted.
    #[arg(long)]
    pub yes: bool,
    /// Also delete a tag alone when a kept tag has its manifest (the OCI spec's tag
    /// delete). Off by default: some registries take the manifest with the tag.
    #[arg(long)]
    pub untag_shared: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RetagArgs {
    /// The image that has the manifest, e.g. ghcr.io/org/img:v1.2.3.
    pub source: String,
    /// New tags: a bare tag (same repository) or a full reference in the same registry.
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl Command {
    /// The flags the run context is made of, from whichever subcommand carries them.
    pub fn run_options(&self) -> crate::context::RunOptions {
        let registry = match self {
            Command::Images(images) => match images.as_ref() {
                ImagesCommand::Build(args) => Some(&args.registry),
                ImagesCommand::Merge(args) => Some(&args.registry),
                ImagesCommand::Mirror(args) => Some(match &args.action {
                    Some(MirrorAction::Save(save)) => &save.registry,
                    Some(MirrorAction::Load(load)) => &load.registry,
                    Some(MirrorAction::Prune(prune)) => &prune.registry,
                    None => &args.copy.registry,
                }),
                ImagesCommand::Retag(args) => Some(&args.registry),
                ImagesCommand::Size(args) => Some(&args.registry),
                ImagesCommand::Sbom(args) => Some(&args.registry),
                ImagesCommand::Bases(args) => Some(&args.registry),
                ImagesCommand::List(_)
                | ImagesCommand::Render(_)
                | ImagesCommand::Verify(_)
                | ImagesCommand::Tools(_)
                | ImagesCommand::New(_) => None,
            },
            Command::Bench(_) => None,
        };
        let ca_bundle = match self {
            Command::Images(images) => match images.as_ref() {
                ImagesCommand::Build(args) => args.ca_bundle.clone(),
                _ => None,
            },
            Command::Bench(_) => None,
        };
        crate::context::RunOptions {
            insecure: registry.map(|r| r.insecure.clone()).unwrap_or_default(),
            timeout: registry.and_then(|r| r.timeout.map(Into::into)),
            ca_bundle,
            max_requests_per_second: registry
                .map(|r| r.max_requests_per_second.clone())
                .unwrap_or_default(),
            max_concurrent: registry
                .map(|r| r.max_concurrent.clone())
                .unwrap_or_default(),
        }
    }
}
