//! `images new NAME [--from devbox|attach|scratch]`: scaffolds a custom executor folder
//! that builds and passes `images verify` as it is.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;

use crate::catalog::{is_valid_image_name, Catalog, AGENTS_DIR, MANIFEST};
use crate::cli::{NewArgs, NewFrom};

impl NewArgs {
    pub fn run(self, ctx: &crate::context::Ctx) -> Result<()> {
        let root = ctx.root.as_path();
        let name = &self.name;
        if !is_valid_image_name(name) {
            bail!(
                "'{name}' is not a valid image name: use lower-case letters, digits and '-', \
                 starting with a letter and not ending with '-' (it becomes kubeopencode-agent-{name})"
            );
        }
        let catalog = Catalog::load(root)?;
        let agents = root.join(AGENTS_DIR);
        let dir = agents.join(name);
        if dir.exists() || catalog.images.contains_key(name) {
            bail!("{AGENTS_DIR}/{name}/ already exists; pick another name (nothing was changed)");
        }
        let files = match self.from {
            NewFrom::Devbox | NewFrom::Attach => {
                let parent = match self.from {
                    NewFrom::Devbox => "devbox",
                    _ => "attach",
                };
                let image = catalog.get(parent)?;
                on_parent(name, parent, &image.spec.platforms)
            }
            NewFrom::Scratch => from_scratch(name),
        };
        // Written beside the catalog, then renamed in: never a half-written folder.
        let staging = agents.join(format!(".{name}.new-{}", std::process::id()));
        let result = (|| -> Result<()> {
            fs::create_dir_all(&staging)?;
            for (file, text) in &files {
                fs::write(staging.join(file), text)?;
            }
            fs::rename(&staging, &dir)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e).with_context(|| format!("writing {AGENTS_DIR}/{name}/"));
        }
        // The scaffold must load like any other image; if it does not, take it back out.
        if let Err(e) = Catalog::load(root) {
            let _ = fs::remove_dir_all(&dir);
            return Err(anyhow!(
                "the scaffold did not load, so it was removed: {e:#}"
            ));
        }
        println!(
            "created {AGENTS_DIR}/{name}/ ({})",
            files.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
        );
        println!(
            "next: cargo xtask images build {name} --load && cargo xtask images verify {name} --local"
        );
        Ok(())
    }
}

const BUDGET_HINT: &str =
    "# Size budget: build it, measure with `cargo xtask images size NAME`, then set each
# limit to the measurement plus about 5%.
# [size]
# max_compressed_mib = 0
# max_uncompressed_mib = 0
";

fn on_parent(name: &str, parent: &str, platforms: &[String]) -> Vec<(&'static str, String)> {
    let platforms = platforms
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let manifest = format!(
        "description = \"{name}: a custom executor built on {parent}\"\n\
         dockerfile = \"Dockerfile\"\n\
         parent = \"{parent}\"\n\
         role = \"executor\"\n\
         platforms = [{platforms}]\n\n{}",
        BUDGET_HINT.replace("NAME", name)
    );
    let install = if parent == "devbox" {
        "# Debian packages, for example:\n\
         # RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-client \\\n\
         #     && rm -rf /var/lib/apt/lists/*\n"
    } else {
        "# attach has only busybox sh, ln and cat; copy static binaries in, for example:\n\
         # COPY --chmod=0755 mytool /usr/local/bin/mytool\n"
    };
    let dockerfile = format!(
        "# {name}: a custom executor on the catalog image {parent}.\n\
         # `parent` is the build context `cargo xtask images build` points at {parent} built\n\
         # in the same run, whatever --registry, --org and --version say.\n\
         # hadolint ignore=DL3006\n\
         FROM parent\n\
         USER 0:0\n\
         {install}\
         # The executor conventions (checked by `cargo xtask images verify {name}`): run as\n\
         # UID 1000 in group 0 with HOME=/tmp, and keep what the agent writes group-0 writable.\n\
         USER 1000:0\n\
         WORKDIR /workspace\n"
    );
    vec![(MANIFEST, manifest), ("Dockerfile", dockerfile)]
}

fn from_scratch(name: &str) -> Vec<(&'static str, String)> {
    let manifest = format!(
        "description = \"{name}: a minimal custom executor (busybox and glibc on scratch)\"\n\
         dockerfile = \"Dockerfile\"\n\
         role = \"executor\"\n\
         platforms = [\"linux/amd64\", \"linux/arm64\"]\n\n\
         # Bases reach the Dockerfile as ARG BASE_<ROLE>, rewritten by --base-registry.\n\
         [bases]\n\
         builder = \"debian:bookworm-slim\"\n\n{}",
        BUDGET_HINT.replace("NAME", name)
    );
    let dockerfile = format!(
        "# {name}: a minimal executor from scratch: a static busybox, the glibc files the\n\
         # OpenCode binary loads, and the executor layout.\n\
         ARG BASE_BUILDER=debian:bookworm-slim\n\n\
         # Debian's packages for the target platform, unpacked on the build platform.\n\
         FROM --platform=$BUILDPLATFORM ${{BASE_BUILDER}} AS fetch\n\
         ARG TARGETARCH\n\
         # hadolint ignore=DL3003,DL3008\n\
         RUN set -eu; \\\n\
         \x20   dpkg --add-architecture \"${{TARGETARCH}}\"; \\\n\
         \x20   apt-get update -qq; \\\n\
         \x20   mkdir -p /tmp/debs /rootfs/bin /rootfs/etc /rootfs/tmp /rootfs/workspace /rootfs/tools; \\\n\
         \x20   chown _apt /tmp/debs; \\\n\
         \x20   cd /tmp/debs; \\\n\
         \x20   apt-get download -qq \"busybox-static:${{TARGETARCH}}\" \"libc6:${{TARGETARCH}}\"; \\\n\
         \x20   for deb in ./*.deb; do dpkg-deb -x \"${{deb}}\" /tmp/target; done; \\\n\
         \x20   cp /tmp/target/bin/busybox /rootfs/bin/busybox; \\\n\
         \x20   case \"${{TARGETARCH}}\" in \\\n\
         \x20     amd64) triplet=x86_64-linux-gnu; loader=ld-linux-x86-64.so.2; link=/lib64 ;; \\\n\
         \x20     arm64) triplet=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1; link=/lib ;; \\\n\
         \x20     *) echo \"{name}: unsupported architecture ${{TARGETARCH}}\" >&2; exit 1 ;; \\\n\
         \x20   esac; \\\n\
         \x20   mkdir -p \"/rootfs/lib/${{triplet}}\" \"/rootfs${{link}}\"; \\\n\
         \x20   for lib in \"${{loader}}\" libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2; do cp -L \"/tmp/target/lib/${{triplet}}/${{lib}}\" \"/rootfs/lib/${{triplet}}/\"; done; \\\n\
         \x20   [ -e \"/rootfs${{link}}/${{loader}}\" ] || ln -s \"/lib/${{triplet}}/${{loader}}\" \"/rootfs${{link}}/${{loader}}\"; \\\n\
         \x20   for applet in sh cat ls cp mv mkdir rm ln echo env; do ln -s busybox \"/rootfs/bin/${{applet}}\"; done; \\\n\
         \x20   chmod 0777 /rootfs/workspace /rootfs/tools; \\\n\
         \x20   chmod 1777 /rootfs/tmp; \\\n\
         \x20   printf 'root:x:0:0:root:/root:/bin/sh\\nagent:x:1000:0:agent:/tmp:/bin/sh\\n' > /rootfs/etc/passwd; \\\n\
         \x20   printf 'root:x:0:\\n' > /rootfs/etc/group; \\\n\
         \x20   rm -rf /var/lib/apt/lists/*\n\n\
         FROM scratch\n\
         COPY --from=fetch /rootfs/ /\n\
         ENV PATH=/bin HOME=/tmp WORKSPACE_DIR=/workspace\n\
         WORKDIR /workspace\n\
         USER 1000:0\n\
         CMD [\"sh\", \"-c\", \"echo {name} is ready\"]\n"
    );
    vec![(MANIFEST, manifest), ("Dockerfile", dockerfile)]
}
