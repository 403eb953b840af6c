//! The operator's conventions as data: the names of the checks `images verify` runs and
//! an image may skip, and the permission format `verify.files` uses. The catalog
//! validates `image.toml` against them; `verify` runs them.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Convention checks by name; an image opts out of one with `verify.skip.<name>`.
pub const CONVENTIONS: &[&str] = &[
    "user",
    "home",
    "workdir",
    "home-writable",
    "workspace-writable",
    "tools-mountable",
    "opencode-from-tools",
    "default-command",
    "copies-to-tools",
    "arbitrary-uid",
    "restricted-profile",
    "root-owned",
    "setuid-trust",
];

/// What a `[[verify.commands]]` check that runs a Docker daemon is granted in place of
/// the restricted profile (`grants` in `image.toml`): the DinD guide's, and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grants {
    /// devbox-dind: dockerd as root.
    Privileged,
    /// devbox-dind-rootless: rootless dockerd, not privileged: the guide's SYS_ADMIN,
    /// NET_ADMIN and seccomp unconfined, and /proc unmasked, without which the kernel
    /// refuses the inner container's procfs in a nested user namespace.
    RootlessDocker,
}

impl Grants {
    pub fn docker_args(self) -> &'static [&'static str] {
        match self {
            Grants::Privileged => &["--privileged"],
            Grants::RootlessDocker => &[
                "--cap-add",
                "SYS_ADMIN",
                "--cap-add",
                "NET_ADMIN",
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "systempaths=unconfined",
            ],
        }
    }
}

/// Validates an `ls -l` style permission string from `image.toml`.
pub fn parse_permissions(text: &str) -> Result<()> {
    let valid = text.len() == 10
        && text.chars().enumerate().all(|(i, c)| match i {
            0 => "-dl".contains(c),
            _ => "-rwxsStT".contains(c),
        });
    if !valid {
        bail!("permissions '{text}' is not of the form drwxr-xr-x (type, then rwx for owner, group, other)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_written_like_ls() {
        assert!(parse_permissions("drwxrwxrwx").is_ok());
        assert!(parse_permissions("0777").is_err());
        assert!(parse_permissions("qrwxrwxrwx").is_err());
    }
}
