//! The build plan: plain data, printable and testable without a daemon, turned into a
//! `docker buildx bake` file.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalog::{validate_platform, Image};
use crate::inputs::Inputs;
use crate::naming::Publish;
use crate::render::Rendered;

pub const CA_BUNDLE_SECRET: &str = "ca-bundle";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Build only; the result stays in the build cache.
    Cache,
    Load,
    Push,
    /// Pushed by digest with no tag (`--push --by-digest`).
    #[serde(rename = "by-digest")]
    ByDigest,
}

impl Output {
    fn exporter(self, layout: &Path) -> String {
        match self {
            Output::Cache => "type=cacheonly".into(),
            Output::Load => "type=docker".into(),
            // BuildKit never talks to the registry: distribution 2.8 writes a tag's link
            // in place, and the engine's pusher HEADs a tag while it is being written,
            // reading a half-written link as a 500 ("invalid checksum digest format").
            // Our client pushes the layout and then writes each tag, one at a time.
            // File times in layers are clamped to SOURCE_DATE_EPOCH, so one commit gives
            // one digest. BuildKit takes `rewrite-timestamp` only here: the image and
            // docker exporters refuse it beside `unpack`.
            Output::Push | Output::ByDigest => format!(
                "type=oci,tar=false,rewrite-timestamp=true,dest={}",
                layout.display()
            ),
        }
    }

    /// Whether the result goes to the registry, so avoidance reads the registry.
    pub fn is_registry(self) -> bool {
        matches!(self, Output::Push | Output::ByDigest)
    }
}

/// Where a push has BuildKit write `image`'s OCI layout for our client to push.
pub fn layout_dir(out: &Path, image: &str) -> PathBuf {
    out.join(".layouts").join(image)
}

/// Inputs shared by every target of one build.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub publish: Publish,
    pub platforms: Vec<String>,
    pub output: Output,
    pub builder: Option<String>,
    pub progress: String,
    pub no_cache: bool,
    pub build_args: BTreeMap<String, String>,
    /// `id=...,src=...` / `id=...,env=...` entries; paths only, never contents.
    pub secrets: Vec<String>,
    pub source_url: String,
    pub revision: String,
    /// Seconds since 1970: the `created` label, and BuildKit's `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// `--cache-from` / `--cache-to` specs, `{image}` not yet filled in.
    pub cache_from: Vec<String>,
    pub cache_to: Vec<String>,
    /// `min` or `max`: a provenance attestation in that mode.
    pub provenance: Option<String>,
}

/// The placeholder a cache spec names the image's repository by.
pub const CACHE_IMAGE: &str = "{image}";

/// Checks a `--cache-from`/`--cache-to` spec the way buildx reads it, so a typo fails
/// before the build.
pub fn validate_cache(flag: &str, spec: &str) -> Result<()> {
    let fields: BTreeMap<&str, &str> = spec
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if fields.get("type").is_none_or(|t| t.is_empty())
        || spec.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        bail!(
            "{flag} '{}' must look like type=registry,ref={CACHE_IMAGE}:buildcache[,mode=max]",
            spec.escape_debug()
        );
    }
    Ok(())
}

/// Bake reads `${…}` and `%{…}` in every string as HCL templates, so a description or
/// path that holds them would be expanded or break the file. `$${` and `%%{` are the
/// literal forms.
fn escape_interpolation(value: &mut Value) {
    match value {
        Value::String(text) if text.contains("${") || text.contains("%{") => {
            *text = text.replace("${", "$${").replace("%{", "%%{");
        }
        Value::Array(items) => items.iter_mut().for_each(escape_interpolation),
        Value::Object(fields) => fields.values_mut().for_each(escape_interpolation),
        _ => {}
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildTarget {
    pub name: String,
    /// False for parents built only because a requested image needs them.
    pub requested: bool,
    pub context: PathBuf,
    pub tags: Vec<String>,
    pub platforms: Vec<String>,
    pub args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub contexts: BTreeMap<String, String>,
    pub output: Output,
    pub cache_from: Vec<String>,
    pub cache_to: Vec<String>,
    /// Bake `attest` entries, e.g. `type=provenance,mode=max`.
    pub attest: Vec<String>,
    /// The input digests this build records (label, annotations).
    pub inputs: Inputs,
    /// The parent in the catalog, if any.
    pub parent: Option<String>,
    /// Where `Output::Push` and `Output::ByDigest` have BuildKit write the OCI layout.
    pub layout: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    pub targets: Vec<BuildTarget>,
    pub builder: Option<String>,
    pub progress: String,
    pub no_cache: bool,
}

impl BuildPlan {
    /// `images` in build order (parents first), each with its rendered context at
    /// `out/<name>`; `requested` names what the user asked for (all when empty).
    pub fn new(
        images: &[&Image],
        rendered: &[Rendered],
        requested: &[String],
        out: &Path,
        inputs: &PlanInputs,
    ) -> Result<BuildPlan> {
        for platform in &inputs.platforms {
            validate_platform(platform)?;
        }
        if inputs.output == Output::Push && inputs.publish.registry.trim().is_empty() {
            bail!("--push needs a registry: pass --registry or set IMG_REGISTRY");
        }
        let mut targets: Vec<BuildTarget> = Vec::new();
        for (image, rendered) in images.iter().zip(rendered) {
            let is_requested = requested.is_empty() || requested.contains(&image.name);
            let platforms = if inputs.platforms.is_empty() {
                image.spec.platforms.clone()
            } else {
                inputs.platforms.clone()
            };
            let contexts = match (&image.spec.parent, &rendered.parent_context) {
                (Some(parent), Some(key)) => {
                    BTreeMap::from([(key.clone(), format!("target:{parent}"))])
                }
                _ => BTreeMap::new(),
            };
            let mut args = inputs.build_args.clone();
            args.extend(rendered.base_args.clone());
            let repository = inputs.publish.repository(&image.name);
            let per_image = |specs: &[String]| -> Vec<String> {
                specs
                    .iter()
                    .map(|s| s.replace(CACHE_IMAGE, &repository))
                    .collect()
            };
            let parent = image.spec.parent.as_ref().and_then(|parent| {
                targets
                    .iter()
                    .find(|t| &t.name == parent)
                    .map(|t| &t.inputs)
            });
            let input_digests = crate::inputs::compute(image, rendered, &args, &platforms, parent)?;
            // An output like `created`, not an input: a new commit alone rebuilds nothing.
            args.insert(
                "SOURCE_DATE_EPOCH".into(),
                inputs.source_date_epoch.to_string(),
            );
            let mut labels = labels(image, inputs);
            labels.insert(crate::inputs::KEY.into(), input_digests.digest.to_string());
            targets.push(BuildTarget {
                name: image.name.clone(),
                requested: is_requested,
                context: out.join(&image.name),
                tags: inputs
                    .publish
                    .refs(&image.name)?
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                platforms,
                args,
                labels,
                secrets: inputs.secrets.clone(),
                contexts,
                // A parent pulled in only as a dependency stays in the build cache.
                output: if is_requested {
                    inputs.output
                } else {
                    Output::Cache
                },
                cache_from: per_image(&inputs.cache_from),
                cache_to: per_image(&inputs.cache_to),
                attest: inputs
                    .provenance
                    .iter()
                    .map(|mode| format!("type=provenance,mode={mode}"))
                    .collect(),
                inputs: input_digests,
                parent: image.spec.parent.clone(),
                layout: layout_dir(out, &image.name),
            });
        }
        Ok(BuildPlan {
            targets,
            builder: inputs.builder.clone(),
            progress: inputs.progress.clone(),
            no_cache: inputs.no_cache,
        })
    }

    pub fn requested(&self) -> impl Iterator<Item = &BuildTarget> {
        self.targets.iter().filter(|t| t.requested)
    }

    pub fn target(&self, name: &str) -> Option<&BuildTarget> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Keeps only the targets in `build`. A child's parent that is not built is taken
    /// from `available` (`name` -> an image reference by digest) as a `docker-image://`
    /// context, or else stays in the plan as a dependency built into the cache only.
    pub fn keep_only(
        &mut self,
        build: &std::collections::BTreeSet<String>,
        available: &BTreeMap<String, String>,
    ) {
        let mut keep = build.clone();
        // Children before parents, so a kept dependency keeps its own parent too.
        for t in self.targets.iter_mut().rev() {
            if !keep.contains(&t.name) {
                continue;
            }
            let Some(parent) = t.parent.clone() else {
                continue;
            };
            if build.contains(&parent) {
                continue;
            }
            if let Some(reference) = available.get(&parent) {
                for value in t.contexts.values_mut() {
                    if *value == format!("target:{parent}") {
                        *value = format!("docker-image://{reference}");
                    }
                }
            } else {
                keep.insert(parent);
            }
        }
        self.targets.retain(|t| keep.contains(&t.name));
        for t in &mut self.targets {
            if !build.contains(&t.name) {
                t.requested = false;
                t.output = Output::Cache;
            }
        }
    }

    /// The bake file, in buildx's JSON format.
    pub fn bake_file(&self) -> Value {
        let mut targets = Map::new();
        for t in &self.targets {
            let mut target = json!({
                "context": t.context,
                "dockerfile": "Dockerfile",
                "tags": t.tags,
                "platforms": t.platforms,
                "labels": t.labels,
                "output": [t.output.exporter(&t.layout)],
            });
            let fields = target.as_object_mut().expect("a JSON object");
            let mut attest = t.attest.clone();
            if t.output.is_registry() {
                fields.insert("annotations".into(), json!(annotations(t)));
                // Always an index with its provenance, one platform or many, so every
                // build has the same shape for `merge` to join.
                if attest.is_empty() {
                    attest.push("type=provenance,mode=min".to_string());
                }
            }
            if !t.args.is_empty() {
                fields.insert("args".into(), json!(t.args));
            }
            if !t.secrets.is_empty() {
                fields.insert("secret".into(), json!(t.secrets));
            }
            if !t.contexts.is_empty() {
                fields.insert("contexts".into(), json!(t.contexts));
            }
            for (key, list) in [
                ("cache-from", &t.cache_from),
                ("cache-to", &t.cache_to),
                ("attest", &attest),
            ] {
                if !list.is_empty() {
                    fields.insert(key.into(), json!(list));
                }
            }
            targets.insert(t.name.clone(), target);
        }
        let group: Vec<&str> = self.requested().map(|t| t.name.as_str()).collect();
        let mut file = json!({
            "group": { "default": { "targets": group } },
            "target": targets,
        });
        escape_interpolation(&mut file);
        file
    }

    /// The exact `docker` arguments that run this plan.
    pub fn bake_args(&self, bake_file: &Path, metadata_file: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec!["buildx".into(), "bake".into()];
        if let Some(builder) = &self.builder {
            args.extend(["--builder".into(), builder.clone()]);
        }
        args.extend([
            "--file".into(),
            bake_file.display().to_string(),
            "--metadata-file".into(),
            metadata_file.display().to_string(),
            "--progress".into(),
            self.progress.clone(),
        ]);
        if self.no_cache {
            args.push("--no-cache".into());
        }
        args.extend(self.requested().map(|t| t.name.clone()));
        args
    }
}

/// The input digest per platform on each manifest; for several platforms, the set's on
/// the index (BuildKit refuses index annotations on a one-platform export).
fn annotations(t: &BuildTarget) -> Vec<String> {
    let key = crate::inputs::KEY;
    let mut annotations: Vec<String> = t
        .inputs
        .platforms
        .iter()
        .map(|(platform, digest)| format!("manifest[{platform}]:{key}={digest}"))
        .collect();
    if t.platforms.len() > 1 {
        annotations.push(format!("index:{key}={}", t.inputs.digest));
    }
    annotations
}

/// RFC 3339 of `epoch`.
fn created(epoch: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn labels(image: &Image, inputs: &PlanInputs) -> BTreeMap<String, String> {
    let oci = |key: &str| format!("org.opencontainers.image.{key}");
    BTreeMap::from([
        (
            oci("title"),
            format!("{}{}", crate::naming::IMAGE_PREFIX, image.name),
        ),
        (oci("description"), image.spec.description.clone()),
        (oci("source"), inputs.source_url.clone()),
        (oci("revision"), inputs.revision.clone()),
        (oci("version"), inputs.publish.version.clone()),
        (oci("created"), created(inputs.source_date_epoch)),
    ])
}

/// Checks a `--secret` value the way buildx reads it, so typos fail before the build.
pub fn validate_secret(spec: &str) -> Result<()> {
    let fields: BTreeMap<&str, &str> = spec
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let id_ok = fields.get("id").is_some_and(|id| !id.is_empty());
    let source_ok = fields.contains_key("src") || fields.contains_key("env");
    if !id_ok || !source_ok {
        bail!("--secret '{spec}' must look like id=NAME,src=FILE or id=NAME,env=VARIABLE");
    }
    if fields.get("id") == Some(&CA_BUNDLE_SECRET) {
        bail!("--secret id={CA_BUNDLE_SECRET} is reserved; pass the file with --ca-bundle instead");
    }
    if let Some(src) = fields.get("src") {
        if !Path::new(src).is_file() {
            bail!("--secret '{spec}': file '{src}' does not exist");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{project, spec};
    use crate::catalog::Catalog;
    use crate::render::{render_all, RenderOptions};

    fn inputs(output: Output) -> PlanInputs {
        PlanInputs {
            publish: Publish {
                registry: "127.0.0.1:5000".into(),
                org: "e2e".into(),
                version: "v1.2.3".into(),
                release_tags: true,
            },
            platforms: vec![],
            output,
            builder: Some("ci".into()),
            progress: "plain".into(),
            no_cache: false,
            build_args: BTreeMap::from([("NPM_REGISTRY".into(), "http://npm.invalid/".into())]),
            secrets: vec!["id=ca-bundle,src=/tmp/ca.pem".into()],
            source_url: "https://example.com/repo".into(),
            revision: "abc123".into(),
            source_date_epoch: 1_767_225_600,
            cache_from: vec![],
            cache_to: vec![],
            provenance: None,
        }
    }

    fn plan_for(requested: &[&str], inputs: &PlanInputs) -> BuildPlan {
        let dir = project(&[
            ("a", &spec(None)),
            ("b", &spec(Some("a"))),
            ("c", &spec(None)),
        ]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        let images = catalog.build_order(&requested).unwrap();
        let options = RenderOptions {
            base_registry: None,
            publish: inputs.publish.clone(),
        };
        let rendered = render_all(&catalog, &images, &options).unwrap();
        BuildPlan::new(&images, &rendered, &requested, Path::new("/out"), inputs).unwrap()
    }

    #[test]
    fn bake_file_chains_parent_and_keeps_dependencies_in_cache() {
        let plan = plan_for(&["b"], &inputs(Output::Push));
        insta::assert_json_snapshot!(plan.bake_file());
        assert_eq!(
            plan.bake_args(Path::new("/out/bake.json"), Path::new("/out/meta.json")),
            [
                "buildx",
                "bake",
                "--builder",
                "ci",
                "--file",
                "/out/bake.json",
                "--metadata-file",
                "/out/meta.json",
                "--progress",
                "plain",
                "b"
            ]
        );
    }

    #[test]
    fn bake_never_interpolates_what_an_image_says() {
        let mut inputs = inputs(Output::Push);
        inputs.source_url = "https://example.com/${HOME}/%{ if true }x%{ endif }".into();
        let bake = plan_for(&["a"], &inputs).bake_file();
        let source = &bake["target"]["a"]["labels"]["org.opencontainers.image.source"];
        assert_eq!(
            source,
            "https://example.com/$${HOME}/%%{ if true }x%%{ endif }"
        );
    }

    #[test]
    fn platform_override_and_load() {
        let mut inputs = inputs(Output::Load);
        inputs.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        let plan = plan_for(&[], &inputs);
        assert_eq!(plan.requested().count(), 3);
        for t in &plan.targets {
            assert_eq!(t.platforms, ["linux/amd64", "linux/arm64"]);
            assert_eq!(t.output, Output::Load);
        }
        inputs.platforms = vec!["darwin/arm64".into()];
        let dir = project(&[("a", &spec(None))]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let images = catalog.build_order(&[]).unwrap();
        let err = BuildPlan::new(&images, &[], &[], Path::new("/out"), &inputs).unwrap_err();
        assert!(err.to_string().contains("linux/<arch>"), "{err}");
    }

    #[test]
    fn cache_and_provenance_reach_every_target_of_the_bake_file() {
        let mut inputs = inputs(Output::Push);
        inputs.cache_from = vec!["type=registry,ref={image}:buildcache".into()];
        inputs.cache_to = vec!["type=registry,ref={image}:buildcache,mode=max".into()];
        inputs.provenance = Some("max".into());
        let bake = plan_for(&["b"], &inputs).bake_file();
        for name in ["a", "b"] {
            let target = &bake["target"][name];
            let repository = format!("127.0.0.1:5000/e2e/kubeopencode-agent-{name}");
            assert_eq!(
                target["cache-from"],
                json!([format!("type=registry,ref={repository}:buildcache")])
            );
            assert_eq!(
                target["cache-to"],
                json!([format!(
                    "type=registry,ref={repository}:buildcache,mode=max"
                )])
            );
            assert_eq!(target["attest"], json!(["type=provenance,mode=max"]));
        }
        let plain = plan_for(&["b"], &self::inputs(Output::Push)).bake_file();
        assert!(plain["target"]["b"].get("cache-from").is_none());
        assert_eq!(
            plain["target"]["b"]["attest"],
            json!(["type=provenance,mode=min"])
        );
    }

    #[test]
    fn cache_specs_are_validated() {
        assert!(validate_cache("--cache-to", "type=registry,ref={image}:c,mode=max").is_ok());
        for bad in ["ref=x", "type=", "type=local,dest=a b", "type=gha\nx"] {
            let err = validate_cache("--cache-to", bad).unwrap_err().to_string();
            assert!(err.starts_with("--cache-to '"), "{err}");
        }
    }

    #[test]
    fn secrets_are_validated() {
        assert!(validate_secret("id=token,env=GITHUB_TOKEN").is_ok());
        assert!(validate_secret("token").is_err());
        assert!(validate_secret("id=x,src=/definitely/not/here").is_err());
        assert!(validate_secret("id=ca-bundle,env=X")
            .unwrap_err()
            .to_string()
            .contains("--ca-bundle"));
    }
}
