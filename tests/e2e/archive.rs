//! `images mirror save` and `load` against real distribution registries and skopeo: any
//! OCI image layout loads with identical digests (skopeo's archives, a `tar` of a layout
//! folder, the folder itself), skopeo reads ours, signatures and referrers travel, and
//! hostile bundles are refused in one line with nothing tagged.

use crate::support::fixture::*;
use crate::support::proxy::{Action, Proxy};
use crate::support::upload::*;
use crate::support::*;
use sha2::Digest as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

pub(crate) fn load(bundle: &Path, to: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "images",
        "mirror",
        "load",
        bundle.to_str().unwrap(),
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    xtask(&args)
}

/// `mirror save` of `images` into `bundle`.
pub(crate) fn save(bundle: &Path, images: &[&str]) {
    let mut args = vec![
        "images",
        "mirror",
        "save",
        "--out",
        bundle.to_str().unwrap(),
    ];
    for image in images {
        args.extend(["--image", image]);
    }
    let output = xtask(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

pub(crate) fn loaded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "load failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The load failed with exactly one line on stderr, which it returns.
pub(crate) fn refused(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "accepted: {stderr}{}",
        text(&output.stdout)
    );
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn skopeo(args: &[&str]) {
    let mut all = vec![
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ];
    all.extend_from_slice(args);
    run("skopeo", &all);
}

/// The index.json of a bundle, read with tar rather than our loader.
pub(crate) fn saved_index(bundle: &Path) -> serde_json::Value {
    let text = run("tar", &["-xOf", bundle.to_str().unwrap(), "index.json"]);
    serde_json::from_str(&text).unwrap()
}

/// The name index.json gives each entry, in order.
pub(crate) fn index_names(index: &serde_json::Value) -> Vec<String> {
    let entries = index["manifests"].as_array().unwrap().iter();
    entries
        .map(|m| {
            let name = &m["annotations"]["org.opencontainers.image.ref.name"];
            name.as_str().unwrap().to_string()
        })
        .collect()
}

/// Loads a bundle of the fixture into `dst` under `prefix/fixture/app` and compares.
pub(crate) fn loads_as_the_original(bundle: &Path, dst: &Registry, prefix: &str, original: &str) {
    let to = format!("{}/{prefix}", dst.addr);
    loaded(&load(bundle, &to, &["--repository", "fixture/app"]));
    assert_same_tree(original, &format!("{to}/fixture/app:v1"));
}

#[test]
fn layouts_from_skopeo_and_tar_load_with_identical_digests() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    let original = format!("{}/fixture/app:v1", src.addr);
    let source = format!("docker://{original}");

    // skopeo names the image only by the tag given after the archive's path.
    let archive = work.path().join("skopeo.tar");
    skopeo(&[&source, &format!("oci-archive:{}:v1", archive.display())]);
    let stderr = refused(&load(&archive, &format!("{}/a", dst.addr), &[]));
    assert!(
        stderr.contains("named only 'v1'") && stderr.contains("--repository REPO"),
        "{stderr}"
    );
    assert_eq!(
        dst.tags(),
        Vec::<String>::new(),
        "a refused load tagged something"
    );
    loads_as_the_original(&archive, &dst, "a", &original);

    // A layout folder, and a plain `tar` of it: directory entries, `./` names, and
    // index.json after the blobs.
    let folder = work.path().join("layout");
    skopeo(&[&source, &format!("oci:{}:v1", folder.display())]);
    let tarred = work.path().join("layout.tar");
    run(
        "tar",
        &[
            "-C",
            folder.to_str().unwrap(),
            "-cf",
            tarred.to_str().unwrap(),
            ".",
        ],
    );
    let listing = run("tar", &["-tf", tarred.to_str().unwrap()]);
    assert_eq!(listing.lines().next(), Some("./"), "{listing}");
    loads_as_the_original(&tarred, &dst, "b", &original);
    loads_as_the_original(&folder, &dst, "c", &original);

    // No name at all: loaded by digest, and nothing is tagged.
    let unnamed = work.path().join("unnamed.tar");
    skopeo(&[&source, &format!("oci-archive:{}", unnamed.display())]);
    let stderr = refused(&load(&unnamed, &format!("{}/d", dst.addr), &[]));
    assert!(
        stderr.contains("has no name") && stderr.contains("--repository"),
        "{stderr}"
    );
    loaded(&load(
        &unnamed,
        &format!("{}/d", dst.addr),
        &["--repository", "fixture/app"],
    ));
    let (digest, _) = raw_digest(&original);
    let (copied, _) = raw_digest(&format!("{}/d/fixture/app@{digest}", dst.addr));
    assert_eq!(copied, digest);
    assert!(
        !dst.tags().iter().any(|t| t.starts_with("d/")),
        "{:?}",
        dst.tags()
    );
}

#[test]
fn skopeo_reads_our_bundle_as_an_oci_layout() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    let original = format!("{}/fixture/app:v1", src.addr);
    save(&bundle, &[&original]);
    skopeo(&[
        &format!("oci-archive:{}:{original}", bundle.display()),
        &format!("docker://{}/s/fixture/app:v1", dst.addr),
    ]);
    assert_same_tree(&original, &format!("{}/s/fixture/app:v1", dst.addr));
}
#[test]
fn save_then_load_into_a_fresh_registry_keeps_digests() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app", "fixture/tools"]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    save(
        &bundle,
        &[
            &format!("{}/fixture/app:v1", src.addr),
            &format!("{}/fixture/tools:v1", src.addr),
        ],
    );
    let listing = run("tar", &["-tf", bundle.to_str().unwrap()]);
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(
        &names[..2],
        ["oci-layout", "index.json"],
        "layout files come first"
    );
    assert!(names
        .iter()
        .all(|n| *n == "oci-layout" || *n == "index.json" || n.starts_with("blobs/sha256/")));
    let index = saved_index(bundle.as_path());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);

    let load = xtask(&[
        "images",
        "mirror",
        "load",
        bundle.to_str().unwrap(),
        "--to",
        &format!("{}/airgap", dst.addr),
    ]);
    assert!(load.status.success(), "{}", text(&load.stderr));
    for repository in ["fixture/app", "fixture/tools"] {
        assert_same_tree(
            &format!("{}/{repository}:v1", src.addr),
            &format!("{}/airgap/{repository}:v1", dst.addr),
        );
    }

    // A damaged archive is refused, naming the blob, and its image is not tagged.
    let damaged = work.path().join("damaged.tar");
    let mut bytes = fs::read(&bundle).unwrap();
    let bad = big_layer(&src.addr, "fixture/app");
    let entry = format!("blobs/sha256/{}", bad.trim_start_matches("sha256:"));
    let at = bytes
        .windows(entry.len())
        .position(|w| w == entry.as_bytes())
        .expect("the layer is in the archive");
    let middle = at + 512 + 1_000_000;
    bytes[middle] ^= 0xff;
    fs::write(&damaged, bytes).unwrap();
    let fresh = Registry::plain();
    let load = xtask(&[
        "images",
        "mirror",
        "load",
        damaged.to_str().unwrap(),
        "--to",
        &format!("{}/airgap", fresh.addr),
    ]);
    let stderr = text(&load.stderr);
    assert!(!load.status.success(), "{stderr}");
    assert!(
        stderr.contains("digest mismatch") && stderr.contains(&bad),
        "{stderr}"
    );
    assert_eq!(
        fresh.tags(),
        Vec::<String>::new(),
        "a damaged image was tagged"
    );
}

const EMPTY_CONFIG: &[u8] = b"{}";

/// A small artifact: an empty config and one payload layer, optionally about `subject`.
fn artifact(config: &str, payload: (&str, usize), subject: Option<(&str, usize)>) -> String {
    let subject = subject.map_or(String::new(), |(digest, size)| {
        format!(r#","subject":{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{digest}","size":{size}}}"#)
    });
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","artifactType":"application/vnd.example.test","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.example.test","digest":"{}","size":{}}}]{subject}}}"#,
        payload.0, payload.1
    )
}

fn sha512(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

/// Every blob of a manifest, fetched by its own digest from `registry`.
fn blobs_of(registry: &Registry, repository: &str, manifest: &serde_json::Value) -> Vec<Vec<u8>> {
    let config = std::iter::once(&manifest["config"]);
    let layers = manifest["layers"].as_array().into_iter().flatten();
    config
        .chain(layers)
        .map(|descriptor| {
            let digest = descriptor["digest"].as_str().unwrap();
            let url = registry.url(&format!("/v2/{repository}/blobs/{digest}"));
            std::process::Command::new("curl")
                .args(["-sf", &url])
                .output()
                .unwrap()
                .stdout
        })
        .collect()
}

/// An image whose config and layers are all named by sha512. distribution 2.8 stores a
/// manifest only under its sha256 (a PUT by sha512 is DIGEST_INVALID), so the index and
/// manifest are sha256; every blob is sha512.
#[test]
fn a_sha512_image_mirrors_saves_and_loads_with_identical_bytes() {
    need!(Registry, Skopeo);
    let (src, dst, fresh) = (Registry::plain(), Registry::plain(), Registry::plain());
    let repository = "sha512/app";
    let layers: Vec<Vec<u8>> = vec![noise(512, 300_000), noise(1024, 2 << 20)];
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        layers
            .iter()
            .map(|l| format!("\"{}\"", sha512(l)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let config_digest = push_blob_as(
        &src,
        repository,
        config.as_bytes(),
        sha512(config.as_bytes()),
    );
    let layer_descriptors: Vec<String> = layers
        .iter()
        .map(|layer| {
            let digest = push_blob_as(&src, repository, layer, sha512(layer));
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{}}}"#, layer.len())
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_descriptors.join(",")
    );
    let manifest_digest = push_manifest(&src, repository, None, &manifest);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{MANIFEST}","digest":"{manifest_digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len()
    );
    put(
        &src.url(&format!("/v2/{repository}/manifests/v1")),
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    );
    let original: Vec<Vec<u8>> = std::iter::once(config.into_bytes()).chain(layers).collect();
    let manifest_text = manifest;
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(
        blobs_of(&src, repository, &manifest),
        original,
        "the source serves every sha512 blob"
    );
    let same_everywhere = |registry: &Registry, path: &str| {
        let raw = |reference: &str| {
            skopeo_inspect("--raw", &format!("{}/{path}{reference}", registry.addr))
        };
        assert_eq!(raw(":v1"), index, "index at {}/{path}", registry.addr);
        assert_eq!(raw(&format!("@{manifest_digest}")), manifest_text);
        assert_eq!(
            blobs_of(registry, path, &manifest),
            original,
            "blobs at {}/{path}",
            registry.addr
        );
    };

    // Registry to registry.
    let source = format!("{}/{repository}:v1", src.addr);
    let out = xtask(&[
        "images",
        "mirror",
        "--image",
        &source,
        "--to",
        &format!("{}/m", dst.addr),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    same_everywhere(&dst, &format!("m/{repository}"));

    // Through a bundle: the blobs travel under blobs/sha512/.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    save(&bundle, &[&source]);
    let listing = run("tar", &["-tf", bundle.to_str().unwrap()]);
    let config_member = format!(
        "blobs/sha512/{}",
        config_digest.trim_start_matches("sha512:")
    );
    assert!(listing.lines().any(|l| l == config_member), "{listing}");
    assert_eq!(listing.matches("blobs/sha512/").count(), 3, "{listing}");
    loaded(&load(&bundle, &format!("{}/air", fresh.addr), &[]));
    same_everywhere(&fresh, &format!("air/{repository}"));
}

#[test]
fn save_carries_signatures_and_referrers_and_load_restores_them() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let original = format!("{}/fixture/app:v1", src.addr);
    let (digest, _) = raw_digest(&original);
    let index_size = skopeo_inspect("--raw", &original).len();
    let config = push_blob(&src, "fixture/app", EMPTY_CONFIG);
    // A cosign-style signature tag beside the image.
    let signature_payload = b"cosign signature payload";
    let payload = push_blob(&src, "fixture/app", signature_payload);
    let signature_tag = format!("{}.sig", digest.replace(':', "-"));
    let signature = push_manifest(
        &src,
        "fixture/app",
        Some(&signature_tag),
        &artifact(&config, (&payload, signature_payload.len()), None),
    );
    // An OCI 1.1 referrer. Distribution 2.8 has no referrers API, so a proxy answers it.
    let sbom_payload = b"an sbom about the image";
    let sbom = push_blob(&src, "fixture/app", sbom_payload);
    let referrer = push_manifest(
        &src,
        "fixture/app",
        None,
        &artifact(
            &config,
            (&sbom, sbom_payload.len()),
            Some((&digest, index_size)),
        ),
    );
    let referrers = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{MANIFEST}","digest":"{referrer}","size":1,"artifactType":"application/vnd.example.test"}}]}}"#
    );
    let referrers_path = format!("/v2/fixture/app/referrers/{digest}");
    let proxy = Proxy::start(
        &src.addr,
        Box::new(move |_, path, _| {
            if path == referrers_path {
                Action::Serve(
                    "application/vnd.oci.image.index.v1+json".into(),
                    referrers.clone().into_bytes(),
                )
            } else {
                Action::Forward
            }
        }),
    );

    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    save(&bundle, &[&format!("{}/fixture/app:v1", proxy.addr)]);
    let index = saved_index(bundle.as_path());
    let names = index_names(&index);
    let repository = format!("{}/fixture/app", proxy.addr);
    assert_eq!(
        names,
        [
            format!("{repository}:v1"),
            format!("{repository}:{signature_tag}"),
            format!("{repository}@{referrer}")
        ],
    );

    loaded(&load(&bundle, &format!("{}/air", dst.addr), &[]));
    assert_same_tree(&original, &format!("{}/air/fixture/app:v1", dst.addr));
    let (copied_signature, _) =
        raw_digest(&format!("{}/air/fixture/app:{signature_tag}", dst.addr));
    assert_eq!(copied_signature, signature);
    let (copied_referrer, copied) = raw_digest(&format!("{}/air/fixture/app@{referrer}", dst.addr));
    assert_eq!(copied_referrer, referrer);
    assert_eq!(copied["subject"]["digest"], digest.as_str());
    for blob in [&payload, &sbom] {
        assert_eq!(
            http_status(&dst.url(&format!("/v2/air/fixture/app/blobs/{blob}"))),
            Some(200),
            "{blob}"
        );
    }
}

/// A one-platform image as layout members in save's order; the layer is 1 MiB of noise,
/// so a cut can land inside it.
struct Tiny {
    members: Vec<(String, Vec<u8>)>,
    manifest: String,
    layer: String,
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn index_json(entries: &[(&str, usize, &str)]) -> Vec<u8> {
    let manifests: Vec<String> = entries
        .iter()
        .map(|(digest, size, name)| {
            format!(
                r#"{{"mediaType":"{MANIFEST}","digest":"{digest}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        manifests.join(",")
    )
    .into_bytes()
}

fn tiny(name: &str) -> Tiny {
    let layer = noise(0x9e3779b97f4a7c15, 1 << 20);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (config_digest, layer_digest) = (sha256(&config), sha256(&layer));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = sha256(manifest.as_bytes());
    Tiny {
        members: vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".into(),
                index_json(&[(&manifest_digest, manifest.len(), name)]),
            ),
            (blob_name(&manifest_digest), manifest.into_bytes()),
            (blob_name(&config_digest), config),
            (blob_name(&layer_digest), layer),
        ],
        manifest: manifest_digest,
        layer: layer_digest,
    }
}

/// `dir/name`, a tar written header by header, so names and types can be anything.
fn raw_tar(dir: &Path, name: &str, members: &[(String, tar::EntryType, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let mut builder = tar::Builder::new(fs::File::create(&path).unwrap());
    for (name, kind, data) in members {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            header.as_old_mut().linkname[..11].copy_from_slice(b"/etc/passwd");
        }
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
    }
    builder.finish().unwrap();
    path
}

fn files(members: &[(String, Vec<u8>)]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    members
        .iter()
        .map(|(name, data)| (name.clone(), tar::EntryType::Regular, data.clone()))
        .collect()
}

#[test]
fn load_counts_only_what_it_verified_in_any_member_order() {
    need!(Registry);
    let good_registry = Registry::plain();
    let work = tempfile::tempdir().unwrap();
    let image = tiny("example.com/team/tiny:v1");
    let good = raw_tar(work.path(), "good.tar", &files(&image.members));
    let out = loaded(&load(&good, &format!("{}/m", good_registry.addr), &[]));
    assert!(out.contains("1 loaded, 0 already current; blobs: 2 verified and uploaded, 0 mounted, 0 already there; 1.0 MiB moved"), "{out}");
    let out = loaded(&load(&good, &format!("{}/m", good_registry.addr), &[]));
    assert!(out.contains("0 loaded, 1 already current; blobs: 0 verified and uploaded, 0 mounted, 2 already there; 0 B moved"), "{out}");
    let mut reversed = files(&image.members);
    reversed.reverse();
    let reversed = raw_tar(work.path(), "reversed.tar", &reversed);
    let out = loaded(&load(&reversed, &format!("{}/r", good_registry.addr), &[]));
    assert!(out.contains("1 loaded"), "{out}");
    assert_eq!(good_registry.tags(), ["m/team/tiny:v1", "r/team/tiny:v1"]);
}

#[test]
fn hostile_and_incomplete_bundles_are_refused_in_one_line_with_nothing_tagged() {
    need!(Registry);
    let hostile = Registry::plain();
    let work = tempfile::tempdir().unwrap();
    let image = tiny("example.com/team/tiny:v1");
    let bundle = |name: &str, members: &[(String, tar::EntryType, Vec<u8>)]| {
        raw_tar(work.path(), name, members)
    };
    let good = bundle("good.tar", &files(&image.members));

    let without = |name: &str| -> Vec<(String, tar::EntryType, Vec<u8>)> {
        files(&image.members)
            .into_iter()
            .filter(|(n, _, _)| n != name)
            .collect()
    };
    let mut cut_short = fs::read(&good).unwrap();
    cut_short.truncate(cut_short.len() - 1024 - (1 << 19));
    let cut = work.path().join("cut.tar");
    fs::write(&cut, cut_short).unwrap();
    let empty = work.path().join("empty.tar");
    fs::write(&empty, b"").unwrap();
    let huge_index = {
        let mut index = image.members[1].1.clone();
        index.splice(1..1, vec![b' '; 5 << 20]);
        index
    };
    let huge_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","annotations":{{"pad":"{}"}}}}"#,
        "x".repeat(5 << 20)
    );
    let huge_digest = sha256(huge_manifest.as_bytes());
    let with_member = |name: &str, kind: tar::EntryType, data: &[u8]| {
        let mut members = files(&image.members);
        members.insert(2, (name.to_string(), kind, data.to_vec()));
        members
    };
    let file = tar::EntryType::Regular;
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("empty file", empty, "no oci-layout and no index.json"),
        (
            "only oci-layout",
            bundle("layout-only.tar", &files(&image.members[..1])),
            "no index.json",
        ),
        ("cut inside a blob", cut, "cut short"),
        (
            "a blob left out",
            bundle("no-layer.tar", &without(&blob_name(&image.layer))),
            "is not in the bundle",
        ),
        (
            "a manifest left out",
            bundle("no-manifest.tar", &without(&blob_name(&image.manifest))),
            "is not in the bundle",
        ),
        (
            "index.json over 4 MiB",
            bundle("huge-index.tar", &{
                let mut m = files(&image.members);
                m[1].2 = huge_index.clone();
                m
            }),
            "index.json is 5243",
        ),
        (
            "a manifest over 4 MiB",
            bundle(
                "huge-manifest.tar",
                &files(&[
                    image.members[0].clone(),
                    (
                        "index.json".into(),
                        index_json(&[(
                            &huge_digest,
                            huge_manifest.len(),
                            "example.com/team/tiny:v1",
                        )]),
                    ),
                    (blob_name(&huge_digest), huge_manifest.clone().into_bytes()),
                ]),
            ),
            "more than the 4 MiB limit",
        ),
        (
            "path traversal",
            bundle("dotdot.tar", &with_member("blobs/../../escape", file, b"x")),
            "climbs out",
        ),
        (
            "absolute path",
            bundle("absolute.tar", &with_member("/tmp/escape", file, b"x")),
            "absolute path",
        ),
        (
            "symbolic link",
            bundle(
                "symlink.tar",
                &with_member(&blob_name(&sha256(b"x")), tar::EntryType::Symlink, b""),
            ),
            "symbolic link",
        ),
        (
            "hard link",
            bundle(
                "hardlink.tar",
                &with_member("blobs/sha256/link", tar::EntryType::Link, b""),
            ),
            "hard link",
        ),
        (
            "not a digest",
            bundle(
                "not-hex.tar",
                &with_member("blobs/sha256/not-a-digest", file, b"x"),
            ),
            "not blobs/<algorithm>/<hex>",
        ),
        (
            "unknown algorithm",
            bundle(
                "md5.tar",
                &with_member(&format!("blobs/md5/{}", "a".repeat(32)), file, b"x"),
            ),
            "not blobs/<algorithm>/<hex>",
        ),
    ];
    // Every case is tried before the verdict, so a failure lists all that slipped through.
    let mut wrong = Vec::new();
    for (what, path, expected) in &cases {
        let out = load(path, &format!("{}/h", hostile.addr), &[]);
        let stderr = text(&out.stderr);
        let one_line = stderr.trim().lines().count() == 1 && stderr.starts_with("error: ");
        if out.status.success() || !one_line || !stderr.contains(expected) {
            wrong.push(format!(
                "{what} (exit {:?}): {stderr}{}",
                out.status.code(),
                text(&out.stdout)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as expected:\n{}",
        wrong.join("\n")
    );

    // A layout folder with a blob that is a symbolic link.
    let folder = work.path().join("folder");
    for (name, data) in &image.members {
        let path = folder.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    let config = folder.join(&image.members[3].0);
    fs::rename(&config, folder.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(folder.join("elsewhere"), &config).unwrap();
    let stderr = refused(&load(&folder, &format!("{}/h", hostile.addr), &[]));
    assert!(stderr.contains("symbolic link"), "{stderr}");

    assert_eq!(
        hostile.tags(),
        Vec::<String>::new(),
        "a refused bundle tagged something"
    );
}
