//! The `setuid-trust` convention: a setuid or setgid program acts with its owner's
//! rights on what it reads, so nothing it runs from or trusts may be writable by anyone
//! but root. devbox-dind-rootless once left /etc/subuid writable by group 0 while
//! newuidmap was setuid root: any user could map UID 0 and become root.

use std::collections::BTreeMap;

/// What setuid and setgid programs read (shadow's newuidmap/newgidmap, su, passwd,
/// sudo, PAM, ssh-keysign), and the dynamic loader's configuration. A directory covers its entries.
const TRUSTED: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
    "/etc/login.defs",
    "/etc/nsswitch.conf",
    "/etc/shells",
    "/etc/pam.conf",
    "/etc/pam.d",
    "/etc/security",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.cache",
    "/etc/ssh",
];

/// Where the shared libraries setuid programs load live (each directory, not its files).
const LIBRARY_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// One path of the image as its tar header has it.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// `/`, `./a/b/`, `a/b` → `/`, `/a/b`, `/a/b`.
pub fn absolute(path: &str) -> String {
    let trimmed = path.trim_start_matches("./").trim_matches('/');
    format!("/{trimmed}")
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| match p.rfind('/') {
        Some(0) if *p != "/" => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&p[..i]),
    })
    .skip(1)
}

/// The setuid and setgid files of the image, and one line per path that they run from or
/// trust and that someone other than root may write. `nodes` is the whole image.
pub fn exposures(nodes: &BTreeMap<String, Node>) -> (Vec<String>, Vec<String>) {
    let privileged: Vec<String> = nodes
        .iter()
        .filter(|(_, n)| n.kind == '-' && n.mode & 0o6000 != 0)
        .map(|(p, _)| p.clone())
        .collect();
    if privileged.is_empty() {
        return (privileged, Vec::new());
    }
    let mut guarded: BTreeMap<&str, String> = BTreeMap::new();
    let mut guard = |path: &str, why: String| {
        for p in std::iter::once(path).chain(ancestors(path)) {
            if let Some((key, _)) = nodes.get_key_value(p) {
                guarded.entry(key.as_str()).or_insert_with(|| why.clone());
            }
        }
    };
    for program in &privileged {
        guard(program, format!("{program} is setuid or setgid"));
    }
    let first = &privileged[0];
    for trusted in TRUSTED {
        let inside = format!("{trusted}/");
        let covered = nodes
            .keys()
            .filter(|p| p.as_str() == *trusted || p.starts_with(&inside));
        for path in covered {
            guard(path, format!("{first} trusts it"));
        }
        guard(trusted, format!("{first} trusts it"));
    }
    for dir in LIBRARY_DIRS {
        let inside = format!("{dir}/");
        let arch_dirs = nodes.iter().filter(|(p, n)| {
            n.kind == 'd' && p.starts_with(&inside) && !p[inside.len()..].contains('/')
        });
        for (path, _) in arch_dirs {
            guard(path, format!("{first} loads libraries from it"));
        }
        guard(dir, format!("{first} loads libraries from it"));
    }
    let problems = guarded
        .into_iter()
        .filter_map(|(path, why)| {
            let node = &nodes[path];
            let whom = writable_by(node)?;
            Some(format!(
                "{path} ({} {}:{}) is writable by {whom}, and {why}",
                super::permissions_text(node.kind, node.mode),
                node.uid,
                node.gid
            ))
        })
        .collect();
    (privileged, problems)
}

/// Who besides root may write `node`, if anyone. A symlink's own mode means nothing.
fn writable_by(node: &Node) -> Option<String> {
    if node.kind == 'l' {
        return None;
    }
    if node.uid != 0 {
        Some(format!("its owner, UID {}", node.uid))
    } else if node.mode & 0o002 != 0 {
        Some("anyone".into())
    } else if node.mode & 0o020 != 0 {
        Some(format!("group {}", node.gid))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entries: &[(&str, char, u32, u64, u64)]) -> BTreeMap<String, Node> {
        entries
            .iter()
            .map(|&(path, kind, mode, uid, gid)| {
                (
                    absolute(path),
                    Node {
                        kind,
                        mode,
                        uid,
                        gid,
                    },
                )
            })
            .collect()
    }

    fn base() -> Vec<(&'static str, char, u32, u64, u64)> {
        vec![
            ("/", 'd', 0o755, 0, 0),
            ("/etc/", 'd', 0o755, 0, 0),
            ("/etc/passwd", '-', 0o644, 0, 0),
            ("/etc/subuid", '-', 0o644, 0, 0),
            ("/etc/pam.d/", 'd', 0o755, 0, 0),
            ("/etc/pam.d/su", '-', 0o644, 0, 0),
            ("/usr/", 'd', 0o755, 0, 0),
            ("/usr/bin/", 'd', 0o755, 0, 0),
            ("/usr/bin/newuidmap", '-', 0o4755, 0, 0),
            ("/usr/lib/", 'd', 0o755, 0, 0),
            ("/usr/lib/x86_64-linux-gnu/", 'd', 0o755, 0, 0),
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", '-', 0o755, 0, 0),
            ("/lib", 'l', 0o777, 0, 0),
            ("/tmp/", 'd', 0o1777, 0, 0),
            ("/workspace/", 'd', 0o777, 0, 0),
        ]
    }

    #[test]
    fn paths_read_the_same_however_tar_writes_them() {
        assert_eq!(absolute("/"), "/");
        assert_eq!(absolute("./etc/pam.d/"), "/etc/pam.d");
        assert_eq!(absolute("etc"), "/etc");
        let up: Vec<&str> = ancestors("/etc/pam.d/su").collect();
        assert_eq!(up, ["/etc/pam.d", "/etc", "/"]);
    }

    #[test]
    fn root_owned_and_read_only_passes_and_writable_elsewhere_is_fine() {
        let (privileged, problems) = exposures(&image(&base()));
        assert_eq!(privileged, ["/usr/bin/newuidmap"]);
        assert!(problems.is_empty(), "{problems:?}");
        let none = image(&[("/etc/subuid", '-', 0o666, 1000, 0)]);
        assert_eq!(exposures(&none), (vec![], vec![]));
    }

    #[test]
    fn a_trusted_file_writable_by_group_0_fails_naming_it() {
        let mut entries = base();
        entries[3] = ("/etc/subuid", '-', 0o664, 0, 0);
        let (_, problems) = exposures(&image(&entries));
        assert_eq!(
            problems,
            ["/etc/subuid (-rw-rw-r-- 0:0) is writable by group 0, and /usr/bin/newuidmap trusts it"]
        );
    }

    #[test]
    fn the_program_its_directories_pam_and_libraries_are_guarded() {
        for (index, entry, whom) in [
            (
                8,
                ("/usr/bin/newuidmap", '-', 0o4755, 1000, 0),
                "its owner, UID 1000",
            ),
            (7, ("/usr/bin/", 'd', 0o775, 0, 0), "group 0"),
            (5, ("/etc/pam.d/su", '-', 0o646, 0, 0), "anyone"),
            (1, ("/etc/", 'd', 0o775, 0, 0), "group 0"),
            (
                10,
                ("/usr/lib/x86_64-linux-gnu/", 'd', 0o777, 0, 0),
                "anyone",
            ),
        ] {
            let mut entries = base();
            entries[index] = entry;
            let (_, problems) = exposures(&image(&entries));
            assert_eq!(problems.len(), 1, "{entry:?}: {problems:?}");
            assert!(
                problems[0].contains(&format!("writable by {whom}")),
                "{problems:?}"
            );
        }
    }
}
