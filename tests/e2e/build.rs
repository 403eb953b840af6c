//! End to end, on a real dockerd and a real registry: the air-gapped build of opencode
//! and attach, multi-arch, then the images doing their jobs.

use crate::support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

const OPENCODE_VERSION: &str = "1.18.14";

#[test]
fn air_gapped_multi_arch_build_of_opencode_and_attach() {
    need!(Docker, Registry, Skopeo, Debootstrap,);
    let registry = Registry::start();
    let prefix = format!("{}/mirror", registry.addr);
    push_base_image(&format!("{prefix}/library/debian:bookworm-slim"));
    // A checkout of one commit, its bases pinned to the stand-in the mirror holds.
    let project = project_copy();
    commit_all(project.path());
    pin_bases(project.path(), &["opencode", "attach"], &prefix);
    let xtask = |args: &[&str]| xtask_in(project.path(), args, &[]);

    // The host's CA bundle plus a marker, to prove the secret never lands in a layer.
    let secrets = tempfile::tempdir().unwrap();
    let marker = format!("xtask-e2e-ca-marker-{}", std::process::id());
    let ca_bundle = secrets.path().join("ca.pem");
    let host_ca = std::fs::read_to_string(HOST_CA_BUNDLE).unwrap();
    std::fs::write(&ca_bundle, format!("# {marker}\n{host_ca}")).unwrap();

    let version = format!("e2e-{}", std::process::id());
    let out = tempfile::tempdir().unwrap();
    let npm = npm_registry();
    let args = [
        "images",
        "build",
        "opencode",
        "attach",
        "--registry",
        &registry.addr,
        "--org",
        "e2e",
        "--version",
        &version,
        "--base-registry",
        &prefix,
        "--ca-bundle",
        ca_bundle.to_str().unwrap(),
        "--npm-registry",
        &npm,
        "--platform",
        "linux/amd64,linux/arm64",
        "--push",
        "--progress",
        "plain",
        "--json",
        "--out",
        out.path().to_str().unwrap(),
    ];
    let build = xtask(&args);
    let stderr = text(&build.stderr);
    assert!(build.status.success(), "build failed:\n{stderr}");
    assert!(
        !stderr.contains(&marker),
        "the CA bundle's contents reached the build log"
    );

    // The result names each image with its pushed digest.
    let built: serde_json::Value = serde_json::from_slice(&build.stdout).unwrap();
    let built = built.as_array().unwrap();
    assert_eq!(built.len(), 2);

    for image in ["opencode", "attach"] {
        let reference = format!("{}/e2e/kubeopencode-agent-{image}:{version}", registry.addr);
        let index = skopeo_raw(&reference);
        assert_eq!(
            index["mediaType"], "application/vnd.oci.image.index.v1+json",
            "{index}"
        );
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .filter(|p| p != "unknown/unknown")
            .collect();
        assert_eq!(
            platforms,
            ["linux/amd64", "linux/arm64"],
            "{image}: {index}"
        );
        let reported = built.iter().find(|b| b["image"] == image).unwrap();
        let index_digest = run(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                &format!("docker://{reference}"),
            ],
        );
        // skopeo's Digest is the digest of what the tag points at: the index.
        assert_eq!(
            reported["digest"].as_str().unwrap(),
            index_digest.trim(),
            "{image}"
        );

        let labels = &skopeo_config(&reference)["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
        assert_eq!(
            labels["org.opencontainers.image.title"],
            format!("kubeopencode-agent-{image}")
        );
        // SOURCE_DATE_EPOCH defaults to the commit time.
        assert_eq!(
            labels["org.opencontainers.image.created"],
            "2026-01-02T03:04:05Z"
        );
        let config = skopeo_config(&reference);
        assert_eq!(config["created"], "2026-01-02T03:04:05Z", "{config}");
        for key in ["source", "revision", "created", "description"] {
            let value = labels[format!("org.opencontainers.image.{key}")]
                .as_str()
                .unwrap_or("");
            assert!(
                !value.is_empty(),
                "{image}: label {key} is missing: {labels}"
            );
        }
        assert_no_layer_contains(
            &registry.addr,
            &format!("e2e/kubeopencode-agent-{image}"),
            &index,
            &marker,
        );
    }

    // The same commit built again, every step run anew: the same bytes.
    let children = |image: &str| -> Vec<(String, String)> {
        let reference = format!("{}/e2e/kubeopencode-agent-{image}:{version}", registry.addr);
        let index = skopeo_raw(&reference);
        let manifests = index["manifests"].as_array().unwrap().iter();
        manifests
            .map(|m| {
                let digest = m["digest"].as_str().unwrap().to_string();
                match m["annotations"]["vnd.docker.reference.type"].as_str() {
                    Some(kind) => (kind.to_string(), digest),
                    None => (
                        m["platform"]["architecture"].as_str().unwrap().to_string(),
                        digest,
                    ),
                }
            })
            .collect()
    };
    // Each platform manifest and its config, to show what differs.
    let describe = |image: &str, children: &[(String, String)]| -> String {
        let repository = format!("{}/e2e/kubeopencode-agent-{image}", registry.addr);
        let mut out = String::new();
        for (kind, digest) in children {
            let pinned = format!("{repository}@{digest}");
            out += &format!("{kind} {digest}:\n{:#}\n", skopeo_raw(&pinned));
            if kind != "attestation-manifest" {
                out += &format!("config: {:#}\n", skopeo_config(&pinned));
            }
        }
        out
    };
    let images = ["opencode", "attach"];
    let first: Vec<_> = images
        .map(|image| {
            let found = children(image);
            let text = describe(image, &found);
            (found, text)
        })
        .into();
    let again = xtask(&[&args[..], &["--no-cache"]].concat());
    assert!(again.status.success(), "rebuild: {}", text(&again.stderr));
    let platforms = |list: &[(String, String)]| -> Vec<(String, String)> {
        let kept = list
            .iter()
            .filter(|(kind, _)| kind != "attestation-manifest");
        kept.cloned().collect()
    };
    for (image, (before, before_text)) in images.iter().zip(&first) {
        let after = children(image);
        assert_eq!(platforms(before).len(), 2, "{image}: {before:?}");
        assert!(
            platforms(before) == platforms(&after),
            "{image}: platform manifests differ on a rebuild\nfirst build:\n{before_text}\nrebuild:\n{}",
            describe(image, &after)
        );
        // What differs is the provenance: when, and by which invocation, it was built.
        let repository = format!("e2e/kubeopencode-agent-{image}");
        let statement = |digest: &str| -> serde_json::Value {
            let manifest = skopeo_raw(&format!("{}/{repository}@{digest}", registry.addr));
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            let url = registry.url(&format!("/v2/{repository}/blobs/{layer}"));
            serde_json::from_str(&run("curl", &["-sfk", &url])).unwrap()
        };
        let attestations = |list: &[(String, String)]| -> Vec<String> {
            let kept = list
                .iter()
                .filter(|(kind, _)| kind == "attestation-manifest");
            kept.map(|(_, digest)| digest.clone()).collect()
        };
        for (old, new) in attestations(before).iter().zip(attestations(&after)) {
            let mut rebuilt = statement(&new);
            // The rebuild's own flag, recorded among its frontend arguments.
            let parameters = &mut rebuilt["predicate"]["invocation"]["parameters"];
            if let Some(args) = parameters["args"].as_object_mut() {
                assert!(args.remove("no-cache").is_some(), "{args:?}");
                if args.is_empty() {
                    parameters.as_object_mut().unwrap().remove("args");
                }
            }
            let mut differ = Vec::new();
            differing_paths("", &statement(old), &rebuilt, &mut differ);
            for path in &differ {
                assert!(
                    PROVENANCE_VARIES.contains(&path.as_str()),
                    "{image}: the provenance differs at {path} too: {differ:?}"
                );
            }
            eprintln!("{image}: provenance differs at {differ:?}");
        }
    }

    let opencode = format!(
        "{}/e2e/kubeopencode-agent-opencode:{version}",
        registry.addr
    );
    let attach = format!("{}/e2e/kubeopencode-agent-attach:{version}", registry.addr);
    run("docker", &["pull", "--quiet", &opencode]);
    run("docker", &["pull", "--quiet", &attach]);

    // The init container fills a fresh /tools volume.
    let volume = format!("xtask-e2e-tools-{}", std::process::id());
    let _cleanup = VolumeGuard(volume.clone());
    let init = run(
        "docker",
        &["run", "--rm", "-v", &format!("{volume}:/tools"), &opencode],
    );
    assert!(
        init.contains(&format!(
            "opencode {OPENCODE_VERSION} installed at /tools/opencode"
        )),
        "{init}"
    );

    // Size budgets and the executor conventions, through the tool itself.
    let naming = e2e_naming(&registry.addr, &version);
    let size = xtask(
        &[
            &["images", "size", "--json", "opencode", "attach"][..],
            &naming[..],
        ]
        .concat(),
    );
    assert!(size.status.success(), "size: {}", text(&size.stderr));
    let sizes: serde_json::Value = serde_json::from_slice(&size.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&sizes).unwrap());
    for image in sizes["images"].as_array().unwrap() {
        let platforms: Vec<&str> = image["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["platform"].as_str().unwrap())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{image}");
        for p in image["platforms"].as_array().unwrap() {
            assert_eq!(p["verdict"], "ok", "{p}");
            // The binary alone is over 150 MiB unpacked, so the measurement is real.
            assert!(p["uncompressed_bytes"].as_u64().unwrap() > 150 << 20, "{p}");
            assert!(p["compressed_bytes"].as_u64().unwrap() > 40 << 20, "{p}");
        }
    }
    let verify = xtask(
        &[
            &["images", "verify", "--json", "opencode", "attach"][..],
            &naming[..],
        ]
        .concat(),
    );
    let outcomes = passing_outcomes(&verify);
    let passed = |image: &str, check: &str, user: &str| {
        outcomes.as_array().unwrap().iter().any(|o| {
            o["image"] == image
                && o["check"] == check
                && o["user"].as_str().unwrap_or("").starts_with(user)
                && o["passed"] == true
        })
    };
    for check in [
        "home-writable",
        "workspace-writable",
        "tools-mountable",
        "opencode-from-tools",
        "default-command",
    ] {
        assert!(
            passed("attach", check, "1000620000:0"),
            "{check}: {outcomes:#}"
        );
        assert!(
            passed("attach", check, "1000:0 (image user)"),
            "{check}: {outcomes:#}"
        );
    }
    assert!(
        passed("opencode", "copies-to-tools", "1000620000:0"),
        "{outcomes:#}"
    );
    let tools = format!("{volume}:/tools");
    let uid = "1000620000:0";

    // The operator's command line, up to the point of connecting to the server.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        let (stream, _) = server.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut first_line = String::new();
        BufReader::new(&stream).read_line(&mut first_line).unwrap();
        let _ = (&stream).write_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        first_line
    });
    let line = format!(
        "ln -sf /tools/opencode /usr/local/bin/opencode; /tools/opencode run --attach http://127.0.0.1:{port} 'say hello'"
    );
    let operator = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "host",
            "--user",
            uid,
            "-v",
            &tools,
            &attach,
            "sh",
            "-c",
            &line,
        ])
        .output()
        .unwrap();
    let request = accept.join().unwrap();
    eprintln!("operator line reached the server with: {}", request.trim());
    assert!(
        request.starts_with("GET ") || request.starts_with("POST "),
        "opencode never reached the server: {request:?}\n{}",
        text(&operator.stderr)
    );
    let output = format!("{}{}", text(&operator.stdout), text(&operator.stderr));
    assert!(
        !output.contains("not found") || output.contains("Session"),
        "{output}"
    );
    assert!(!output.contains("Permission denied"), "{output}");
}

/// The provenance fields BuildKit fills in per build (README, "Reproducible builds").
const PROVENANCE_VARIES: &[&str] = &[
    "predicate.metadata.buildInvocationID",
    "predicate.metadata.buildStartedOn",
    "predicate.metadata.buildFinishedOn",
];

/// The dotted paths of the leaves where `a` and `b` differ.
fn differing_paths(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let null = serde_json::Value::Null;
                let (l, r) = (x.get(key).unwrap_or(&null), y.get(key).unwrap_or(&null));
                differing_paths(&join(key), l, r, out);
            }
        }
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differing_paths(&join(&i.to_string()), l, r, out);
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

/// Counts how often `needle` occurs in the uncompressed layers of every platform image.
fn count_in_layers(
    registry: &str,
    repository: &str,
    index: &serde_json::Value,
    needle: &str,
) -> usize {
    let scratch = tempfile::tempdir().unwrap();
    let blob_file = scratch.path().join("blob");
    let mut total = 0;
    for manifest in index["manifests"].as_array().unwrap() {
        let digest = manifest["digest"].as_str().unwrap();
        let image = skopeo_raw(&format!("{registry}/{repository}@{digest}"));
        for layer in image["layers"].as_array().unwrap() {
            let blob = layer["digest"].as_str().unwrap();
            let url = format!("https://{registry}/v2/{repository}/blobs/{blob}");
            run("curl", &["-skf", "-o", blob_file.to_str().unwrap(), &url]);
            let script = format!(
                "gzip -dc '{}' | grep -c -a -F '{needle}' || true",
                blob_file.display()
            );
            total += run("sh", &["-c", &script]).trim().parse::<usize>().unwrap();
        }
    }
    total
}

fn assert_no_layer_contains(
    registry: &str,
    repository: &str,
    index: &serde_json::Value,
    needle: &str,
) {
    // The scan itself must see content, or a broken scan would pass silently.
    assert!(
        count_in_layers(registry, repository, index, "ld-linux") > 0,
        "layer scan of {repository} read nothing"
    );
    assert_eq!(
        count_in_layers(registry, repository, index, needle),
        0,
        "a layer of {repository} holds the CA bundle"
    );
}
