//! Renders Dockerfile templates (minijinja) and assembles each image's build context.

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, Image, AGENTS_DIR, MANIFEST, TEMPLATES_DIR};
use crate::naming::Publish;

/// The build context a plain Dockerfile reaches its catalog parent by: `FROM parent`.
pub const PARENT_CONTEXT: &str = "parent";

/// Everything a template may depend on besides its own `image.toml`.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub base_registry: Option<String>,
    pub publish: Publish,
}

/// One image ready for `docker buildx`: a Dockerfile and the files of its context.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub name: String,
    pub dockerfile: String,
    /// What is copied from the image folder: relative path to what it is.
    pub context_files: BTreeMap<PathBuf, ContextEntry>,
    /// The named build context the template refers to its parent by.
    pub parent_context: Option<String>,
    /// Build args for a plain Dockerfile's bases (`BASE_<ROLE>`).
    pub base_args: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct TemplateContext<'a> {
    image: ImageInfo<'a>,
    bases: BTreeMap<&'a str, String>,
    vars: toml::Table,
    /// The tools lock, each tool with its URL per architecture filled in.
    tools: BTreeMap<&'a str, TemplateTool<'a>>,
    parent: Option<String>,
}

#[derive(Serialize)]
struct TemplateTool<'a> {
    version: &'a str,
    /// `{version}` filled in; `{arch}` left for `verified_download`.
    url: String,
    arch_names: &'a BTreeMap<String, String>,
    sha256: &'a BTreeMap<String, String>,
    signature: Option<TemplateSignature<'a>>,
}

#[derive(Serialize)]
struct TemplateSignature<'a> {
    url: String,
    key: &'a str,
    fingerprint: &'a str,
}

#[derive(Serialize)]
struct ImageInfo<'a> {
    name: &'a str,
    description: &'a str,
    platforms: &'a [String],
}

pub fn environment(root: &Path) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_loader(minijinja::path_loader(root.join(TEMPLATES_DIR)));
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    // A Dockerfile is line-based: a value with a newline would add instructions. Every
    // interpolated value goes through `one_line`; template text and macro output
    // (marked safe by the custom escape mode) are written as they are.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Custom("dockerfile"));
    env.set_formatter(one_line);
    env.add_function(
        "fail",
        |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env
}

/// Writes an interpolated value, refusing control characters (a newline above all).
fn one_line(
    out: &mut minijinja::Output,
    _: &minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    let text = value.to_string();
    if !value.is_safe() {
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the value '{}' holds the control character {c:?}; a Dockerfile value must be one line",
                    crate::text::printable(&text)
                ),
            ));
        }
    }
    out.write_str(&text).map_err(minijinja::Error::from)
}

/// Renders `images` (with their parents resolved through the catalog) in memory.
pub fn render_all(
    catalog: &Catalog,
    images: &[&Image],
    options: &RenderOptions,
) -> Result<Vec<Rendered>> {
    let env = environment(&catalog.root);
    images
        .iter()
        .map(|image| render_image(&env, catalog, image, options))
        .collect()
}

fn render_image(
    env: &Environment<'_>,
    catalog: &Catalog,
    image: &Image,
    options: &RenderOptions,
) -> Result<Rendered> {
    // The build context the parent is reached by: a template names it by its reference
    // (`{{ parent }}`); a plain Dockerfile by the stable name `parent` (`FROM parent`),
    // which never changes with --registry, --org or --version.
    let parent_context = match (&image.spec.parent, &image.spec.template) {
        (Some(parent), Some(_)) => Some(options.publish.reference(parent)?.context_key()),
        (Some(_), None) => Some(PARENT_CONTEXT.to_string()),
        (None, _) => None,
    };
    let bases: BTreeMap<&str, String> = image
        .bases
        .iter()
        .map(|(role, reference)| {
            let rewritten = match &options.base_registry {
                Some(prefix) => reference.under_prefix(prefix)?,
                None => reference.clone(),
            };
            Ok((role.as_str(), rewritten.to_string()))
        })
        .collect::<Result<_>>()?;
    // A plain Dockerfile sees each base as a build arg, `ARG BASE_<ROLE>`, rewritten by
    // --base-registry like a template's `{{ bases.<role> }}`.
    let mut base_args = BTreeMap::new();
    let dockerfile = match (&image.spec.template, &image.spec.dockerfile) {
        (Some(template), _) => {
            let bases = bases.clone();
            let context = TemplateContext {
                image: ImageInfo {
                    name: &image.name,
                    description: &image.spec.description,
                    platforms: &image.spec.platforms,
                },
                bases,
                vars: inherited_vars(catalog, image),
                tools: template_tools(image),
                parent: parent_context.clone(),
            };
            let body = env
                .get_template(template)
                .and_then(|t| t.render(&context))
                .map_err(|e| template_error(&catalog.root, &image.name, &e))?;
            format!(
                "# Generated from {TEMPLATES_DIR}/{template} by `cargo xtask images render`. \
                 Do not edit; edit the template or agents/{}/{MANIFEST}.\n{body}",
                image.name
            )
        }
        (None, Some(dockerfile)) => {
            for (role, reference) in &bases {
                base_args.insert(base_arg_name(role), reference.clone());
            }
            let path = image.dir.join(dockerfile);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => unreachable!("validated by the catalog"),
    };
    reject_syntax_directive(&image.name, &dockerfile)?;
    Ok(Rendered {
        name: image.name.clone(),
        dockerfile,
        context_files: context_files(image)?,
        parent_context,
        base_args,
    })
}

/// An image's template vars over its parent's, and so on up: a child follows what was
/// chosen for its parent (devbox-dind-rootless takes devbox-dind's `docker_packages`).
/// The catalog has refused parent cycles.
fn inherited_vars(catalog: &Catalog, image: &Image) -> toml::Table {
    let parent = image
        .spec
        .parent
        .as_ref()
        .and_then(|p| catalog.images.get(p));
    let mut vars = parent.map_or_else(toml::Table::new, |p| inherited_vars(catalog, p));
    vars.extend(image.spec.vars.clone());
    vars
}

/// `builder` → `BASE_BUILDER`.
pub fn base_arg_name(role: &str) -> String {
    format!("BASE_{}", role.to_ascii_uppercase().replace('-', "_"))
}

fn template_tools(image: &Image) -> BTreeMap<&str, TemplateTool<'_>> {
    let Some(lock) = &image.tools else {
        return BTreeMap::new();
    };
    let with_version = |url: &str, version: &str| url.replace("{version}", version);
    lock.tools
        .iter()
        .map(|(name, tool)| {
            let template_tool = TemplateTool {
                version: &tool.version,
                url: with_version(&tool.url, &tool.version),
                arch_names: &tool.arch_names,
                sha256: &tool.sha256,
                signature: tool.signature.as_ref().map(|s| TemplateSignature {
                    url: with_version(&s.url, &tool.version),
                    key: &s.key,
                    fingerprint: &s.fingerprint,
                }),
            };
            (name.as_str(), template_tool)
        })
        .collect()
}

/// `file:line: message (near: source line)`, one line, for any template failure.
fn template_error(root: &Path, image: &str, error: &minijinja::Error) -> anyhow::Error {
    let name = error.name().unwrap_or("?");
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    let source_line = error.line().and_then(|line| {
        fs::read_to_string(root.join(TEMPLATES_DIR).join(name))
            .ok()
            .and_then(|text| {
                text.lines()
                    .nth(line.saturating_sub(1))
                    .map(str::trim)
                    .map(String::from)
            })
    });
    let location = match error.line() {
        Some(line) => format!("{TEMPLATES_DIR}/{name}:{line}"),
        None => format!("{TEMPLATES_DIR}/{name}"),
    };
    match source_line {
        Some(text) if !text.is_empty() => {
            anyhow!("{location}: {message} (in `{text}`, rendering image '{image}')")
        }
        _ => anyhow!("{location}: {message} (rendering image '{image}')"),
    }
}

/// Offline builders have no Dockerfile frontend image to pull; the built-in one must do.
fn reject_syntax_directive(image: &str, dockerfile: &str) -> Result<()> {
    let directive = dockerfile
        .lines()
        .take_while(|l| l.starts_with('#'))
        .any(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_ascii_lowercase()
                .starts_with("syntax=")
        });
    if directive {
        bail!(
            "image '{image}': the Dockerfile has a `# syntax=` directive, which makes BuildKit \
             pull a frontend image and breaks offline builds; remove it"
        );
    }
    Ok(())
}

/// One entry of a build context, as it is in the image folder.
#[derive(Debug, Clone)]
pub enum ContextEntry {
    File(PathBuf),
    /// Kept with its mode, so an empty `rootfs/workspace` with mode 0777 arrives as such.
    Dir(u32),
    /// Kept as a link; it may only point inside the image folder.
    Symlink(PathBuf),
}

fn context_files(image: &Image) -> Result<BTreeMap<PathBuf, ContextEntry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = BTreeMap::new();
    let label = format!("{AGENTS_DIR}/{}", image.name);
    for entry in walkdir::WalkDir::new(&image.dir).follow_links(false) {
        let entry = entry.with_context(|| format!("reading {}", image.dir.display()))?;
        let relative = entry
            .path()
            .strip_prefix(&image.dir)
            .expect("walkdir stays under its root")
            .to_path_buf();
        let metadata_file =
            relative == Path::new(MANIFEST) || relative == Path::new(crate::catalog::lock::LOCK);
        if metadata_file || relative.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.file_type();
        let context_entry = if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            if !link_stays_inside(&relative, &target) {
                bail!(
                    "{label}/{}: the symlink points outside the image folder ({}); \
                     copy the file into the folder instead",
                    relative.display(),
                    target.display()
                );
            }
            ContextEntry::Symlink(target)
        } else if kind.is_dir() {
            ContextEntry::Dir(entry.metadata()?.permissions().mode() & 0o7777)
        } else if kind.is_file() {
            ContextEntry::File(entry.path().to_path_buf())
        } else {
            bail!(
                "{label}/{}: only files, folders and symlinks can go into a build context",
                relative.display()
            );
        };
        files.insert(relative, context_entry);
    }
    Ok(files)
}

/// Whether a relative link at `link` (relative to the image folder) resolves inside it.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    use std::path::Component;
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

impl Rendered {
    /// Writes the context to `out/<name>/`, replacing what was there in one rename so a
    /// failed run never leaves a half-written context behind.
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let target = out.join(&self.name);
        let staging = out.join(format!(".{}.tmp-{}", self.name, std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        let result = (|| -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let mut dirs = Vec::new();
            for (relative, entry) in &self.context_files {
                let dest = staging.join(relative);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                match entry {
                    ContextEntry::File(source) => {
                        fs::copy(source, &dest).with_context(|| {
                            format!("copying {} into the build context", source.display())
                        })?;
                    }
                    ContextEntry::Dir(mode) => {
                        fs::create_dir_all(&dest)?;
                        dirs.push((dest, *mode));
                    }
                    ContextEntry::Symlink(target) => std::os::unix::fs::symlink(target, &dest)?,
                }
            }
            // Modes last, deepest first, so a read-only folder is filled before it closes.
            for (dir, mode) in dirs.iter().rev() {
                fs::set_permissions(dir, fs::Permissions::from_mode(*mode))?;
            }
            fs::write(staging.join("Dockerfile"), &self.dockerfile)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if target.exists() {
            fs::remove_dir_all(&target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
        fs::rename(&staging, &target)
            .with_context(|| format!("moving the rendered context to {}", target.display()))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{project, spec};

    fn options(base_registry: Option<&str>) -> RenderOptions {
        RenderOptions {
            base_registry: base_registry.map(String::from),
            publish: Publish {
                registry: "ghcr.io".into(),
                org: "kubeopencode".into(),
                version: "latest".into(),
                release_tags: false,
            },
        }
    }

    fn render_one(dir: &Path, name: &str, opts: &RenderOptions) -> Result<Rendered> {
        let catalog = Catalog::load(dir)?;
        let images = catalog.build_order(&[name.to_string()])?;
        let image = images.last().copied().unwrap();
        render_all(&catalog, &[image], opts).map(|mut v| v.remove(0))
    }

    #[test]
    fn header_and_base_prefix() {
        let dir = project(&[("a", &spec(None))]);
        let rendered =
            render_one(dir.path(), "a", &options(Some("127.0.0.1:5000/mirror"))).unwrap();
        assert!(rendered.dockerfile.starts_with(
            "# Generated from dockerfiles/plain.Dockerfile.j2 by `cargo xtask images render`. Do not edit"
        ));
        assert!(rendered
            .dockerfile
            .contains("FROM 127.0.0.1:5000/mirror/library/debian:bookworm-slim\n"));
        let plain = render_one(dir.path(), "a", &options(None)).unwrap();
        assert!(plain
            .dockerfile
            .contains("FROM docker.io/library/debian:bookworm-slim\n"));
    }

    /// Renders image `a` of `dir` with `template` as its template, and returns the error.
    fn template_error(dir: &Path, template: &str) -> String {
        fs::write(dir.join("dockerfiles/plain.Dockerfile.j2"), template).unwrap();
        format!("{:#}", render_one(dir, "a", &options(None)).unwrap_err())
    }

    #[test]
    fn a_value_with_a_newline_never_reaches_the_dockerfile() {
        let dir = project(&[("a", &spec(None))]);
        let err = template_error(
            dir.path(),
            "{% macro two() %}FROM scratch\nLABEL a=1\n{% endmacro %}{{ two() }}\
             {% set v = \"x\\nRUN evil\" %}LABEL v={{ v }}\n",
        );
        assert!(
            err.contains("must be one line") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn template_errors_are_one_line_with_location() {
        let dir = project(&[("a", &spec(None))]);
        let err = template_error(dir.path(), "FROM scratch\nRUN echo {{ vars.missing }}\n");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with("dockerfiles/plain.Dockerfile.j2:2: undefined value"),
            "{err}"
        );
        assert!(err.contains("`RUN echo {{ vars.missing }}`"), "{err}");

        let err = template_error(dir.path(), "{% if %}\n");
        assert!(err.contains("syntax error"), "{err}");

        let err = template_error(
            dir.path(),
            "{{ fail('opencode_source must be npm or github') }}\n",
        );
        assert!(
            err.contains("opencode_source must be npm or github"),
            "{err}"
        );
    }

    #[test]
    fn syntax_directive_is_refused() {
        let dir = project(&[("a", &spec(None))]);
        let err = template_error(dir.path(), "# syntax=docker/dockerfile:1\nFROM scratch\n");
        assert!(err.contains("`# syntax=` directive"), "{err}");
    }

    #[test]
    fn parent_is_a_named_context_and_files_are_copied() {
        let dir = project(&[("a", &spec(None)), ("b", &spec(Some("a")))]);
        fs::write(
            dir.path().join("dockerfiles/plain.Dockerfile.j2"),
            "FROM {{ parent | default('scratch') }}\n",
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("agents/b/files")).unwrap();
        fs::write(dir.path().join("agents/b/files/entry.sh"), "#!/bin/sh\n").unwrap();
        let rendered = render_one(dir.path(), "b", &options(None)).unwrap();
        assert_eq!(
            rendered.parent_context.as_deref(),
            Some("ghcr.io/kubeopencode/kubeopencode-agent-a")
        );
        assert!(rendered
            .dockerfile
            .contains("FROM ghcr.io/kubeopencode/kubeopencode-agent-a\n"));
        let out = tempfile::tempdir().unwrap();
        let written = rendered.write(out.path()).unwrap();
        assert!(written.join("files/entry.sh").is_file());
        assert!(written.join("Dockerfile").is_file());
        assert!(!written.join("image.toml").exists());
        // Writing again replaces the context and leaves no staging folder behind.
        rendered.write(out.path()).unwrap();
        let names: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b"]);
    }

    /// Every Dockerfile the real catalog renders, as reviewed snapshots.
    #[test]
    fn catalog_dockerfiles_match_snapshots() {
        let catalog = Catalog::load(&crate::project::project_root()).unwrap();
        let images = catalog.build_order(&[]).unwrap();
        let rendered = render_all(
            &catalog,
            &images,
            &options(Some("registry.example.com/mirror")),
        )
        .unwrap();
        assert!(!rendered.is_empty());
        for (image, r) in images.iter().zip(rendered) {
            // Every image with a base pulls it through the mirror; the others build on a parent.
            if !image.bases.is_empty() {
                assert!(r
                    .dockerfile
                    .contains(" registry.example.com/mirror/library/"));
            }
            insta::assert_snapshot!(format!("dockerfile_{}", r.name), r.dockerfile);
        }
    }

    #[test]
    fn context_keeps_links_and_folder_modes_and_refuses_links_out() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = project(&[("a", &spec(None))]);
        let folder = dir.path().join("agents/a");
        fs::create_dir_all(folder.join("rootfs/bin")).unwrap();
        fs::create_dir_all(folder.join("rootfs/workspace")).unwrap();
        fs::set_permissions(
            folder.join("rootfs/workspace"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        fs::write(folder.join("rootfs/bin/busybox"), "binary").unwrap();
        symlink("busybox", folder.join("rootfs/bin/sh")).unwrap();
        let catalog = Catalog::load(dir.path()).unwrap();
        let images = catalog.build_order(&[]).unwrap();
        let rendered = render_all(&catalog, &images, &options(None)).unwrap();
        let out = dir.path().join("out");
        let target = rendered[0].write(&out).unwrap();
        let link = target.join("rootfs/bin/sh");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("busybox"));
        let mode = fs::metadata(target.join("rootfs/workspace"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o777);

        for escaping in ["../../../../etc/passwd", "/etc/passwd", "../../image.toml"] {
            let _ = fs::remove_file(folder.join("rootfs/leak"));
            symlink(escaping, folder.join("rootfs/leak")).unwrap();
            let catalog = Catalog::load(dir.path()).unwrap();
            let images = catalog.build_order(&[]).unwrap();
            let err = format!(
                "{:#}",
                render_all(&catalog, &images, &options(None)).unwrap_err()
            );
            assert!(
                err.contains("agents/a/rootfs/leak: the symlink points outside"),
                "{err}"
            );
        }
        assert!(link_stays_inside(Path::new("a/b/c"), Path::new("../x")));
        assert!(!link_stays_inside(Path::new("c"), Path::new("../x")));
    }

    /// The project's devbox-dind and devbox-dind-rootless, rendered with devbox-dind's
    /// `vars.docker_packages` set.
    fn render_dind(docker_packages: &str) -> Result<Vec<Rendered>> {
        let mut catalog = Catalog::load(&crate::project::project_root()).unwrap();
        let dind = catalog.images.get_mut("devbox-dind").unwrap();
        dind.spec
            .vars
            .insert("docker_packages".into(), docker_packages.into());
        let dind = catalog.images["devbox-dind"].clone();
        let rootless = catalog.images["devbox-dind-rootless"].clone();
        render_all(&catalog, &[&dind, &rootless], &options(None))
    }

    #[test]
    fn dind_renders_with_dockers_own_packages() {
        let rendered = render_dind("docker-ce").unwrap();
        let dockerfile = &rendered[0].dockerfile;
        assert!(
            dockerfile.contains("docker-ce docker-ce-cli containerd.io"),
            "{dockerfile}"
        );
        assert!(dockerfile.contains("9DC858229FC7DD38854AE2D88D81803C0EBFCD88"));
        assert!(!dockerfile.contains("docker.io iptables"));
        // The rootless child follows its parent's choice: Docker's rootless extras
        // (dockerd-rootless.sh, rootlesskit), not Debian's rootlesskit.
        let rootless = &rendered[1].dockerfile;
        assert!(
            rootless.contains("docker-ce-rootless-extras fuse-overlayfs slirp4netns uidmap"),
            "{rootless}"
        );
        assert!(
            !rootless.contains("rootlesskit fuse-overlayfs"),
            "{rootless}"
        );
        let debian = render_dind("debian").unwrap();
        let rootless = &debian[1].dockerfile;
        assert!(
            rootless.contains("rootlesskit fuse-overlayfs"),
            "{rootless}"
        );
        assert!(
            !rootless.contains("docker-ce-rootless-extras"),
            "{rootless}"
        );

        let err = format!("{:#}", render_dind("podman").unwrap_err());
        assert!(err.contains("must be \"debian\" or \"docker-ce\""), "{err}");
    }
}
