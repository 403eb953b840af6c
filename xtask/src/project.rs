//! Where the checkout is, and facts about it from git.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout this xtask was built from, so the tool works from any directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Default output folder for rendered contexts.
pub fn images_out(root: &Path) -> PathBuf {
    root.join("target").join("images")
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The commit time of `HEAD` in seconds since 1970, outside a git checkout `None`.
pub fn commit_time(root: &Path) -> Option<u64> {
    git(root, &["log", "-1", "--format=%ct", "HEAD"])?
        .parse()
        .ok()
}

/// The commit being built, or `unknown` outside a git checkout.
pub fn revision(root: &Path) -> String {
    git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
}

/// The origin remote as a browsable https URL, without credentials.
pub fn source_url(root: &Path) -> Option<String> {
    let remote = git(root, &["remote", "get-url", "origin"])?;
    let url = if let Some(rest) = remote.strip_prefix("git@") {
        format!("https://{}", rest.replacen(':', "/", 1))
    } else if let Some(rest) = remote.strip_prefix("ssh://git@") {
        format!("https://{rest}")
    } else if remote.starts_with("https://") || remote.starts_with("http://") {
        strip_userinfo(&remote)
    } else {
        return None;
    };
    Some(url.trim_end_matches(".git").to_string())
}

fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_never_reaches_labels() {
        assert_eq!(
            strip_userinfo("https://user:token@github.com/org/repo.git"),
            "https://github.com/org/repo.git"
        );
        assert_eq!(
            strip_userinfo("https://github.com/org/repo"),
            "https://github.com/org/repo"
        );
    }
}
