//! Incremental and split bundles (`mirror save --since`, `--max-part-size`) against real
//! registries, with skopeo judging the copies: an incremental bundle carries only what
//! PREVIOUS lacks and loads only where PREVIOUS was loaded; a split bundle loads from its
//! parts and refuses a missing, reordered or altered part before anything is tagged.

use crate::archive::{index_names, load, loaded, loads_as_the_original, refused, saved_index};
use crate::support::fixture::*;
use crate::support::proxy::{Action, Proxy};
use crate::support::upload::*;
use crate::support::*;
use crate::trust_verify::{cosign, key_pair, sign};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

fn save_with(out: &Path, images: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["images", "mirror", "save", "--out", out.to_str().unwrap()];
    for image in images {
        args.extend(["--image", image]);
    }
    args.extend_from_slice(extra);
    xtask(&args)
}

fn saved(output: Output) -> String {
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

/// The `blobs/` members of a tar (`tar` reads the parts of a split one concatenated).
fn blob_members(tar: &[PathBuf]) -> Vec<String> {
    let mut all = Vec::new();
    for part in tar {
        all.extend(fs::read(part).unwrap());
    }
    let joined = tempfile::NamedTempFile::new().unwrap();
    fs::write(joined.path(), all).unwrap();
    let listing = run("tar", &["-tf", joined.path().to_str().unwrap()]);
    let mut blobs: Vec<String> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("blobs/"))
        .map(|l| l.replacen('/', ":", 1))
        .collect();
    blobs.sort();
    blobs
}

/// `save --since previous` of `images` into `out`; the blobs it carries.
fn save_since(out: &Path, images: &[&str], previous: &Path) -> Vec<String> {
    saved(save_with(
        out,
        images,
        &["--since", previous.to_str().unwrap()],
    ));
    blob_members(&[out.to_path_buf()])
}

fn file_sha256(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())
}

/// `fixture/app:v2` at the source: v1's amd64 layers, one new layer and a new config,
/// as one changed image of a release; returns its new blobs and manifest, sorted.
fn change_one_image(src: &Registry) -> Vec<String> {
    let big = big_layer(&src.addr, "fixture/app");
    let (_, index) = raw_digest(&format!("{}/fixture/app:v1", src.addr));
    let amd64 = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, manifest) = raw_digest(&format!("{}/fixture/app@{amd64}", src.addr));
    let big_size = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == big.as_str())
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    let layer = noise(0x51_7cc1_b727_220a, 64 << 10);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["V=2"]}}"#;
    let (layer_digest, config_digest) = (
        push_blob(src, "fixture/app", &layer),
        push_blob(src, "fixture/app", config),
    );
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{big}","size":{big_size}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = push_manifest(src, "fixture/app", Some("v2"), &body);
    let mut new = vec![layer_digest, config_digest, manifest_digest];
    new.sort();
    new
}

#[test]
fn incremental_bundle_carries_only_new_blobs_and_loads_only_onto_previous() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (
        format!("{}/fixture/app:v1", src.addr),
        format!("{}/fixture/app:v2", src.addr),
    );
    let previous = work.path().join("previous.tar");
    saved(save_with(&previous, &[&v1], &[]));
    let new_blobs = change_one_image(&src);

    let new = work.path().join("new.tar");
    assert_eq!(
        save_since(&new, &[&v1, &v2], &previous),
        new_blobs,
        "only v2's new blobs"
    );
    let (full, incremental) = (
        fs::metadata(&previous).unwrap().len(),
        fs::metadata(&new).unwrap().len(),
    );
    assert!(incremental * 10 < full, "{incremental} of {full} bytes");
    let index = saved_index(&new);
    let names = index_names(&index);
    assert_eq!(names, [v1.clone(), v2.clone()]);
    let previous_sha = file_sha256(&previous);
    assert_eq!(
        index["annotations"]["dev.kubeopencode.bundle.since.sha256"],
        previous_sha.as_str()
    );

    // Onto a destination without PREVIOUS: one line naming it and the count; no tag.
    let to = format!("{}/m", dst.addr);
    let stderr = refused(&load(&new, &to, &[]));
    assert!(
        stderr.contains("previous.tar")
            && stderr.contains(&previous_sha)
            && stderr.contains(" 1 blobs and 1 manifests"),
        "{stderr}"
    );
    dst.assert_empty("a refused incremental load wrote something (a blob, a manifest, a tag)");

    // Where PREVIOUS was loaded, NEW completes the set, as skopeo sees it.
    loaded(&load(&previous, &to, &[]));
    loaded(&load(&new, &to, &[]));
    assert_same_tree(&v1, &format!("{to}/fixture/app:v1"));
    let (copied, _) = raw_digest(&format!("{to}/fixture/app:v2"));
    assert_eq!(copied, raw_digest(&v2).0);
    let pulled = work.path().join("pulled");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{to}/fixture/app:v2"),
            &format!("dir:{}", pulled.display()),
        ],
    );
    // --since an incremental bundle: what it left out counts as not carried.
    let after_new = work.path().join("after-new.tar");
    assert_eq!(
        save_since(&after_new, &[&v1, &v2], &new),
        blob_members(std::slice::from_ref(&previous)),
        "all of v1 again, none of v2's new blobs"
    );

    assert_eq!(
        fs::read_dir(&pulled).unwrap().count(),
        5,
        "manifest, version, config, two layers"
    );
}

#[test]
fn signed_incremental_bundle_is_verified_where_previous_was_loaded() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    key_pair(work.path(), "cosign");
    let signed_by_key = ["--key", "cosign.key"];
    let (v1, v2) = (
        format!("{}/fixture/app:v1", src.addr),
        format!("{}/fixture/app:v2", src.addr),
    );
    sign(work.path(), &v1, &signed_by_key);
    let previous = work.path().join("previous.tar");
    saved(save_with(&previous, &[&v1], &[]));
    change_one_image(&src);
    sign(work.path(), &v2, &signed_by_key);
    let new = work.path().join("new.tar");
    saved(save_with(
        &new,
        &[&v1, &v2],
        &["--since", previous.to_str().unwrap()],
    ));
    let key = work.path().join("cosign.pub");
    let verify = ["--verify-key", key.to_str().unwrap()];

    // v1's signed manifest is left out of NEW: without PREVIOUS at the destination it
    // cannot be checked, which is one line naming PREVIOUS; nothing is tagged.
    let stderr = refused(&load(&new, &format!("{}/elsewhere", dst.addr), &verify));
    assert!(
        stderr.contains("left out of this bundle, saved --since previous.tar")
            && stderr.contains("load previous.tar there first"),
        "{stderr}"
    );
    assert_eq!(dst.tags(), Vec::<String>::new(), "a refused load tagged");

    // Where PREVIOUS was loaded (and checked), NEW is checked too: v1 by what PREVIOUS
    // put there, v2 by what NEW carries. cosign agrees at the destination.
    let to = format!("{}/m", dst.addr);
    loaded(&load(&previous, &to, &verify));
    let output = load(&new, &to, &verify);
    loaded(&output);
    let stderr = text(&output.stderr);
    for image in [&v1, &v2] {
        assert!(stderr.contains(&format!("verified {image}")), "{stderr}");
    }
    for tag in ["v1", "v2"] {
        cosign(
            work.path(),
            &[
                "verify",
                "--key",
                "cosign.pub",
                "--insecure-ignore-tlog",
                "--allow-insecure-registry",
                &format!("{to}/fixture/app:{tag}"),
            ],
        );
    }
}

fn part(out: &Path, number: usize) -> PathBuf {
    PathBuf::from(format!("{}.part-{number:03}", out.display()))
}

/// The parts of `out` as saved, in order.
fn parts_of(out: &Path) -> Vec<PathBuf> {
    (1..)
        .map(|n| part(out, n))
        .take_while(|p| p.exists())
        .collect()
}

/// A copy of the split bundle `out` in a fresh folder, damaged by `damage`; its first part.
fn damaged_copy(out: &Path, work: &Path, name: &str, damage: impl Fn(&[PathBuf])) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir(&dir).unwrap();
    let copy = dir.join(out.file_name().unwrap());
    let sidecar = format!("{}.parts.json", out.display());
    fs::copy(&sidecar, format!("{}.parts.json", copy.display())).unwrap();
    for (index, from) in parts_of(out).iter().enumerate() {
        fs::copy(from, part(&copy, index + 1)).unwrap();
    }
    damage(&parts_of(&copy));
    part(&copy, 1)
}

/// What a case does to the parts of a copy.
type Damage = Box<dyn Fn(&[PathBuf])>;

#[test]
fn split_bundle_loads_from_its_parts_and_refuses_any_part_out_of_place() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app"]);
    let work = tempfile::tempdir().unwrap();
    let original = format!("{}/fixture/app:v1", src.addr);
    let out = work.path().join("split.tar");

    let stderr = refused(&save_with(&out, &[&original], &["--max-part-size", "512K"]));
    assert!(
        stderr.contains("--max-part-size 512K") && stderr.contains("1 MiB"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        0,
        "a refused save wrote files"
    );

    // A layer that goes bad midway, after some parts are written: no part is left behind.
    let big = big_layer(&src.addr, "fixture/app");
    let proxy = Proxy::start(
        &src.addr,
        Box::new(
            move |method, path, _| match method == "GET" && path.ends_with(&big) {
                true => Action::Corrupt(2_500_000),
                false => Action::Forward,
            },
        ),
    );
    let through_proxy = format!("{}/fixture/app:v1", proxy.addr);
    let failed = save_with(&out, &[&through_proxy], &["--max-part-size", "1MiB"]);
    let stderr = text(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: the archive was not written: digest mismatch"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        0,
        "a failed save left files"
    );

    saved(save_with(&out, &[&original], &["--max-part-size", "1MiB"]));
    let parts = parts_of(&out);
    assert!(parts.len() >= 2, "{parts:?}");
    assert!(parts
        .iter()
        .all(|p| fs::metadata(p).unwrap().len() <= 1 << 20));
    let mut files: Vec<String> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        parts.len() + 1,
        "parts and the sidecar only: {files:?}"
    );
    assert_eq!(files.last().unwrap(), "split.tar.parts.json");
    // The parts concatenated are the tar; skopeo loads it into the registry as ours would.
    let joined = work.path().join("joined");
    fs::create_dir(&joined).unwrap();
    let joined = joined.join("whole.tar");
    fs::write(
        &joined,
        parts
            .iter()
            .flat_map(|p| fs::read(p).unwrap())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}:{original}", joined.display()),
            &format!("docker://{}/skopeo/fixture/app:v1", dst.addr),
        ],
    );
    assert_same_tree(&original, &format!("{}/skopeo/fixture/app:v1", dst.addr));
    loads_as_the_original(&parts[0], &dst, "whole", &original);

    let cases: [(&str, Damage, &str); 3] = [
        (
            "missing",
            Box::new(|p| fs::remove_file(&p[1]).unwrap()),
            "split.tar.part-002 is missing",
        ),
        (
            "swapped",
            Box::new(|p| {
                let swap = p[0].with_extension("swap");
                fs::rename(&p[0], &swap).unwrap();
                fs::rename(&p[1], &p[0]).unwrap();
                fs::rename(&swap, &p[1]).unwrap();
            }),
            "split.tar.part-001 holds what",
        ),
        (
            "flipped",
            Box::new(|p| {
                let mut bytes = fs::read(&p[2]).unwrap();
                bytes[1000] ^= 1;
                fs::write(&p[2], bytes).unwrap();
            }),
            "split.tar.part-003 does not match the sha256",
        ),
    ];
    for (name, damage, expected) in cases {
        let first = damaged_copy(&out, work.path(), name, damage);
        let stderr = refused(&load(&first, &format!("{}/{name}", dst.addr), &[]));
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            !dst.catalog()
                .iter()
                .any(|(r, _)| r.starts_with(&format!("{name}/"))),
            "{name}: something was written: {:?}",
            dst.catalog()
        );
    }

    // --since a split bundle, split again: nothing changed, so only index.json travels,
    // naming PREVIOUS by its sidecar's sha256.
    let again = work.path().join("again").join("again.tar");
    fs::create_dir(again.parent().unwrap()).unwrap();
    let sidecar = PathBuf::from(format!("{}.parts.json", out.display()));
    saved(save_with(
        &again,
        &[&original],
        &[
            "--since",
            parts[0].to_str().unwrap(),
            "--max-part-size",
            "1MiB",
        ],
    ));
    let again_parts = parts_of(&again);
    assert_eq!(again_parts.len(), 1);
    assert_eq!(blob_members(&again_parts), Vec::<String>::new());
    let index: serde_json::Value = serde_json::from_str(&run(
        "tar",
        &["-xOf", again_parts[0].to_str().unwrap(), "index.json"],
    ))
    .unwrap();
    assert_eq!(
        index["annotations"]["dev.kubeopencode.bundle.since.sha256"],
        file_sha256(&sidecar).as_str()
    );
    assert_eq!(
        index["annotations"]["dev.kubeopencode.bundle.since.name"],
        "split.tar.parts.json"
    );
    let output = loaded(&load(
        &again_parts[0],
        &format!("{}/whole", dst.addr),
        &["--repository", "fixture/app"],
    ));
    assert!(output.contains("0 loaded, 1 already current"), "{output}");
}

#[test]
fn incremental_bundle_carries_again_what_previous_had_for_another_repository() {
    need!(Docker, Registry, Skopeo);
    let (src, dst) = source_and_destination(&["fixture/app", "fixture/tools"]);
    let work = tempfile::tempdir().unwrap();
    let (app, tools) = (
        format!("{}/fixture/app:v1", src.addr),
        format!("{}/fixture/tools:v1", src.addr),
    );
    let previous = work.path().join("previous.tar");
    saved(save_with(&previous, &[&app], &[]));
    // The same image in a new repository: PREVIOUS's load put its blobs in app only.
    let new = work.path().join("new.tar");
    assert_eq!(
        save_since(&new, &[&app, &tools], &previous),
        blob_members(std::slice::from_ref(&previous)),
        "tools needs all of it again"
    );
    let to = format!("{}/x", dst.addr);
    loaded(&load(&previous, &to, &[]));
    loaded(&load(&new, &to, &[]));
    assert_same_tree(&tools, &format!("{to}/fixture/tools:v1"));
    assert_same_tree(&app, &format!("{to}/fixture/app:v1"));
}
