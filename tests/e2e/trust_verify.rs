//! The mirror verifies cosign signatures before it writes anything: cosign 2.5 signs
//! (with keys and with a certificate from a local CA), hostile signatures are crafted by
//! hand on a real registry, and `mirror load` checks a bundle with the source gone.

use crate::support::fixture::{raw_digest, seed, skopeo_copy};
use crate::support::upload::{push_blob, push_manifest};
use crate::support::*;
use sha2::Digest as _;
use std::fs;
use std::path::Path;
use std::process::Command;

const ISSUER: &str = "https://issuer.example.com";
const IDENTITY: &str = "release@example.com";

/// cosign with the keys' password, in `dir`; fails the test on error.
fn cosign(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("cosign")
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "test-password")
        .output()
        .expect("cosign runs");
    assert!(
        output.status.success(),
        "cosign {}: {}{}",
        args.join(" "),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// `dir/NAME.key` and `dir/NAME.pub`.
fn key_pair(dir: &Path, name: &str) {
    cosign(dir, &["generate-key-pair", "--output-key-prefix", name]);
}

/// Signs `registry/repository:v1` by digest, as a release would, with no transparency log.
fn sign(dir: &Path, reference: &str, extra: &[&str]) -> String {
    let (digest, _) = raw_digest(reference);
    let repository = reference.rsplit_once(':').unwrap().0;
    let pinned = format!("{repository}@{digest}");
    let mut args = vec![
        "sign",
        "--yes",
        "--tlog-upload=false",
        "--allow-insecure-registry",
    ];
    args.extend(extra);
    args.push(&pinned);
    cosign(dir, &args);
    digest
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// A one-layer image of its own digest (`seed` makes the layer), pushed with skopeo.
fn tiny_image(registry: &str, reference: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer, layer_size) = put(&fixture::noise(seed, 4096));
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer]}});
    let (config, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}]});
    let (manifest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    skopeo_copy(
        &format!("oci:{}:v1", dir.path().display()),
        &format!("docker://{registry}/{reference}"),
    );
}

fn get(registry: &Registry, path: &str) -> Vec<u8> {
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let output = Command::new("curl")
        .args(["-sf", "-H", accept, &registry.url(path)])
        .output()
        .unwrap();
    assert!(output.status.success(), "GET {path}");
    output.stdout
}

/// A local CA and a code-signing certificate for `NAME.pub`, naming IDENTITY and ISSUER
/// as Fulcio does (both issuer extensions).
fn local_ca(dir: &Path, name: &str) {
    // Paths in a temporary folder have no spaces: one string per command reads best.
    let openssl = |args: String| {
        let args: Vec<&str> = args.split_whitespace().collect();
        run("openssl", &args);
    };
    let d = dir.display();
    openssl(format!(
        "ecparam -name prime256v1 -genkey -noout -out {d}/ca.key"
    ));
    openssl(format!(
        "req -x509 -new -key {d}/ca.key -subj /CN=TestCA -days 2 -out {d}/ca.pem \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
    ));
    openssl(format!(
        "ecparam -name prime256v1 -genkey -noout -out {d}/csr.key"
    ));
    openssl(format!(
        "req -new -key {d}/csr.key -subj /CN=signer -out {d}/leaf.csr"
    ));
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName=email:{IDENTITY}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n\
             1.3.6.1.4.1.57264.1.1=DER:{}\n1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{ISSUER}\n",
            hex::encode(ISSUER)
        ),
    )
    .unwrap();
    // The certificate is for the cosign key's public half, which signs.
    openssl(format!(
        "x509 -req -in {d}/leaf.csr -force_pubkey {d}/{name}.pub -CA {d}/ca.pem -CAkey {d}/ca.key \
         -CAcreateserial -days 1 -extfile {d}/leaf.ext -out {d}/leaf.pem"
    ));
}

/// Source images: two cosign accepts, and one of each hostile kind. Returns the list
/// file (in `keys`), with `[verify]` for key `a` and the certificate image's own policy.
fn signed_and_hostile(src: &Registry, keys: &Path) -> std::path::PathBuf {
    let r = &src.addr;
    key_pair(keys, "a");
    key_pair(keys, "b");
    key_pair(keys, "c");
    local_ca(keys, "c");
    seed(r, &["good/index", "toponly/app"]);
    for (i, reference) in [
        "good/cert:v1",
        "unsigned/app:v1",
        "otherkey/app:v1",
        "otherdigest/app:v1",
        "otherdigest/app:y",
        "tampered/app:v1",
        "elsewhere/app:v1",
        "otherid/app:v1",
    ]
    .iter()
    .enumerate()
    {
        tiny_image(r, reference, 1000 + i as u64);
    }
    let a = ["--key", "a.key"];
    sign(
        keys,
        &format!("{r}/good/index:v1"),
        &["--key", "a.key", "--recursive"],
    );
    // The index only: its platform manifests stay unsigned.
    sign(keys, &format!("{r}/toponly/app:v1"), &a);
    sign(keys, &format!("{r}/otherkey/app:v1"), &["--key", "b.key"]);
    // The local CA's certificate, where the list wants another identity.
    let certificate = [
        "--key",
        "c.key",
        "--certificate",
        "leaf.pem",
        "--certificate-chain",
        "ca.pem",
    ];
    sign(keys, &format!("{r}/otherid/app:v1"), &certificate);
    sign(keys, &format!("{r}/good/cert:v1"), &certificate);
    // A valid signature of :y, put where :v1's signature would be.
    let y = sign(keys, &format!("{r}/otherdigest/app:y"), &a);
    let (v1, _) = raw_digest(&format!("{r}/otherdigest/app:v1"));
    let y_sig = get(
        src,
        &format!("/v2/otherdigest/app/manifests/{}", sig_tag(&y)),
    );
    push_manifest(src, "otherdigest/app", Some(&sig_tag(&v1)), &text(&y_sig));
    // The payload edited after signing, the manifest made consistent with it.
    let t = sign(keys, &format!("{r}/tampered/app:v1"), &a);
    let mut manifest: serde_json::Value = serde_json::from_slice(&get(
        src,
        &format!("/v2/tampered/app/manifests/{}", sig_tag(&t)),
    ))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let payload = text(&get(src, &format!("/v2/tampered/app/blobs/{layer}")));
    let edited = payload.replace("\"optional\":null", "\"optional\":{\"approved\":\"yes\"}");
    assert_ne!(payload, edited);
    manifest["layers"][0]["digest"] = push_blob(src, "tampered/app", edited.as_bytes()).into();
    manifest["layers"][0]["size"] = edited.len().into();
    push_manifest(
        src,
        "tampered/app",
        Some(&sig_tag(&t)),
        &manifest.to_string(),
    );
    // Signed for elsewhere/app, offered as moved/app.
    let w = sign(keys, &format!("{r}/elsewhere/app:v1"), &a);
    skopeo_copy(
        &format!("docker://{r}/elsewhere/app:v1"),
        &format!("docker://{r}/moved/app:v1"),
    );
    skopeo_copy(
        &format!("docker://{r}/elsewhere/app:{}", sig_tag(&w)),
        &format!("docker://{r}/moved/app:{}", sig_tag(&w)),
    );
    let list = keys.join("signed.toml");
    let mut toml =
        String::from("description = \"signed and hostile\"\n\n[verify]\nkeys = [\"a.pub\"]\n");
    for repository in [
        "good/index:v1",
        "unsigned/app:v1",
        "otherkey/app:v1",
        "otherdigest/app:v1",
        "tampered/app:v1",
        "moved/app:v1",
        "toponly/app:v1",
    ] {
        toml.push_str(&format!("\n[[image]]\nsource = \"{r}/{repository}\"\n"));
    }
    toml.push_str(&format!(
        "\n[[image]]\nsource = \"{r}/good/cert:v1\"\n[image.verify]\nidentity = \"{IDENTITY}\"\n\
         issuer = \"{ISSUER}\"\ncertificate_chain = \"ca.pem\"\n"
    ));
    toml.push_str(&format!(
        "\n[[image]]\nsource = \"{r}/otherid/app:v1\"\n[image.verify]\nidentity = \"someone-else@example.com\"\n\
         issuer = \"{ISSUER}\"\ncertificate_chain = \"ca.pem\"\n"
    ));
    fs::write(&list, toml).unwrap();
    list
}

/// Each hostile image with the reason it must be refused for.
fn hostile_reasons(r: &str) -> Vec<(String, String)> {
    [
        ("unsigned/app:v1", "unsigned (no sha256-".to_string()),
        (
            "otherkey/app:v1",
            "no signature verifies with key".to_string(),
        ),
        (
            "otherdigest/app:v1",
            "the signature is over another image".to_string(),
        ),
        (
            "tampered/app:v1",
            "no signature verifies with key".to_string(),
        ),
        (
            "moved/app:v1",
            format!("the signature claims {r}/elsewhere/app, not {r}/moved/app"),
        ),
        ("toponly/app:v1", "unsigned (no sha256-".to_string()),
        (
            "otherid/app:v1",
            "no signature verifies with identity someone-else@example.com".to_string(),
        ),
    ]
    .into_iter()
    .map(|(s, why)| (format!("{r}/{s}"), why))
    .collect()
}

/// What the destination must hold: the two good images and their signatures, only.
fn assert_only_the_good(dst: &Registry, prefix: &str) {
    let repositories: Vec<String> = dst.catalog().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        repositories,
        [
            format!("{prefix}/good/cert"),
            format!("{prefix}/good/index")
        ],
        "only the verified images were written: {:?}",
        dst.tags()
    );
    let tags = dst.tags();
    let signatures = |repository: &str| {
        tags.iter()
            .filter(|t| {
                t.starts_with(&format!("{prefix}/{repository}:sha256-")) && t.ends_with(".sig")
            })
            .count()
    };
    // The index, both platforms and the attestation manifest: cosign --recursive signs all.
    assert_eq!(signatures("good/index"), 4, "{tags:?}");
    assert_eq!(signatures("good/cert"), 1, "{tags:?}");
}

#[test]
fn mirror_copies_what_cosign_signed_and_refuses_each_hostile_signature() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = tempfile::tempdir().unwrap();
    let list = signed_and_hostile(&src, keys.path());
    let list = list.to_str().unwrap();
    let to = format!("{}/m", dst.addr);

    let dry = xtask(&["images", "mirror", list, "--to", &to, "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan = text(&dry.stdout);
    for (source, why) in hostile_reasons(&src.addr) {
        let row = plan
            .lines()
            .find(|l| l.starts_with(&format!("{source} ")))
            .unwrap_or_else(|| panic!("{source} in {plan}"));
        assert!(row.contains("REFUSED: ") && row.contains(&why), "{row}");
    }
    let good = plan
        .lines()
        .find(|l| l.contains("/good/index:v1 "))
        .unwrap();
    assert!(
        good.contains("verified: 4 manifests signed by key"),
        "{good}"
    );
    let cert = plan.lines().find(|l| l.contains("/good/cert:v1 ")).unwrap();
    assert!(
        cert.contains(&format!("signed by {IDENTITY} (issuer {ISSUER})")),
        "{cert}"
    );
    dst.assert_empty("--dry-run writes nothing");

    let output = xtask(&["images", "mirror", list, "--to", &to]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "refusals fail the run: {stderr}");
    for (source, why) in hostile_reasons(&src.addr) {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("REFUSED  {source}: ")))
            .unwrap_or_else(|| panic!("{source} refused: {stderr}"));
        assert!(line.contains(&why), "{line}");
    }
    assert!(
        stderr.contains("refused by the signature policy"),
        "{stderr}"
    );
    assert_only_the_good(&dst, "m");

    // cosign, the independent party, verifies the copies at the destination.
    cosign(
        keys.path(),
        &[
            "verify",
            "--key",
            "a.pub",
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            &format!("{to}/good/index:v1"),
        ],
    );
}

#[test]
fn load_verifies_from_the_bundle_with_the_source_gone() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = tempfile::tempdir().unwrap();
    let list = signed_and_hostile(&src, keys.path());
    let list = list.to_str().unwrap();
    let bundle = keys.path().join("bundle.tar");
    let bundle = bundle.to_str().unwrap();

    // The connected side can refuse too: the bad images stay out of its bundle.
    let checked = keys.path().join("checked.tar");
    let save = xtask(&[
        "images",
        "mirror",
        "save",
        list,
        "--out",
        checked.to_str().unwrap(),
    ]);
    let stderr = text(&save.stderr);
    assert!(!save.status.success(), "{stderr}");
    for (source, _) in hostile_reasons(&src.addr) {
        assert!(
            stderr.contains(&format!("REFUSED  {source}: ")),
            "{source}: {stderr}"
        );
    }
    assert!(
        text(&save.stdout).contains("saved 2 images"),
        "{}",
        text(&save.stdout)
    );

    // Saved with no policy, everything goes in: the check happens inside the air gap.
    let unchecked = keys.path().join("unchecked.toml");
    // The same images without any policy; not otherid/app, which only its list's own
    // identity refuses (load's policy below takes its certificate).
    let sources: String = fs::read_to_string(list)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("source = ") && !l.contains("/otherid/"))
        .map(|l| format!("[[image]]\n{l}\n"))
        .collect();
    fs::write(&unchecked, format!("description = \"x\"\n{sources}")).unwrap();
    let save = xtask(&[
        "images",
        "mirror",
        "save",
        unchecked.to_str().unwrap(),
        "--out",
        bundle,
    ]);
    assert!(save.status.success(), "{}", text(&save.stderr));
    let cert_args = [
        "--certificate-identity",
        IDENTITY,
        "--certificate-oidc-issuer",
        ISSUER,
    ];
    let src_addr = src.addr.clone();
    drop(src);

    let ca = keys.path().join("ca.pem");
    let a = keys.path().join("a.pub");
    let to = format!("{}/m", dst.addr);
    let mut args = vec![
        "images",
        "mirror",
        "load",
        bundle,
        "--to",
        &to,
        "--verify-key",
        a.to_str().unwrap(),
    ];
    args.extend(cert_args);
    args.extend(["--certificate-chain", ca.to_str().unwrap()]);
    let load = xtask(&args);
    let stderr = text(&load.stderr);
    assert!(!load.status.success(), "{stderr}");
    let hostile = hostile_reasons(&src_addr).into_iter();
    for (source, why) in hostile.filter(|(s, _)| !s.contains("/otherid/")) {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("REFUSED  {source}: ")))
            .unwrap_or_else(|| panic!("{source} refused: {stderr}"));
        assert!(line.contains(&why), "{line}");
    }
    assert_only_the_good(&dst, "m");
}

#[test]
fn bad_policy_input_is_one_line_and_writes_nothing() {
    need!(Registry);
    let dst = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    run(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &d("private.pem"),
        ],
    );
    fs::write(
        d("bad.toml"),
        format!("description = \"x\"\n[verify]\nkeyz = [\"a.pub\"]\n[[image]]\nsource = \"{}/a/b:v1\"\n", dst.addr),
    )
    .unwrap();
    let image = format!("{}/a/b:v1", dst.addr);
    let to = format!("{}/m", dst.addr);
    let missing = d("missing.pub");
    let private = d("private.pem");
    let bad_list = d("bad.toml");
    let bundle = d("bundle.tar");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--image", &image, "--verify-key", &missing],
            "cannot read it",
        ),
        (
            vec!["--image", &image, "--verify-key", &private],
            "not a 'PUBLIC KEY'",
        ),
        (
            vec![
                "--image",
                &image,
                "--certificate-identity-regexp",
                "(",
                "--certificate-oidc-issuer",
                ISSUER,
                "--certificate-chain",
                &private,
            ],
            "is not a valid regular expression",
        ),
        (
            vec!["--image", &image, "--certificate-identity", IDENTITY],
            "needs --certificate-oidc-issuer",
        ),
        (
            vec!["--image", &image, "--trusted-root", &missing],
            "not supported yet",
        ),
        (vec![&bad_list], "unknown field `keyz`"),
    ];
    // load takes the flags (no lists): its policy is read before the bundle.
    let empty_bundle = d("empty.tar");
    fs::write(&empty_bundle, "").unwrap();
    for (flags, want) in cases {
        let load = vec!["images", "mirror", "load", &empty_bundle, "--to", &to];
        for command in [
            vec!["images", "mirror", "--to", &to],
            vec!["images", "mirror", "save", "--out", &bundle],
            load,
        ] {
            let mut args = command.clone();
            match flags.iter().position(|f| *f == "--image") {
                Some(_) if command[2] == "load" => args.extend(&flags[2..]),
                None if command[2] == "load" => continue,
                _ => args.extend(&flags),
            }
            let output = xtask(&args);
            let stderr = text(&output.stderr);
            assert!(!output.status.success(), "{args:?}");
            assert!(stderr.contains(want), "{args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
            assert!(!Path::new(&bundle).exists());
        }
    }
    dst.assert_empty("bad input writes nothing");
}

#[test]
fn an_index_signed_without_its_children_is_refused_until_they_are_signed() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = tempfile::tempdir().unwrap();
    key_pair(keys.path(), "a");
    seed(&src.addr, &["index/app"]);
    let image = format!("{}/index/app:v1", src.addr);
    let to = format!("{}/m", dst.addr);
    let a = keys.path().join("a.pub");
    let mirror = || {
        xtask(&[
            "images",
            "mirror",
            "--image",
            &image,
            "--to",
            &to,
            "--verify-key",
            a.to_str().unwrap(),
        ])
    };
    sign(keys.path(), &image, &["--key", "a.key"]);
    let refused = mirror();
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("REFUSED  {image}: its manifest sha256:"))
            && stderr.contains(": unsigned (no sha256-"),
        "{stderr}"
    );
    dst.assert_empty("an index with unsigned children writes nothing");

    sign(keys.path(), &image, &["--key", "a.key", "--recursive"]);
    let copied = mirror();
    assert!(copied.status.success(), "{}", text(&copied.stderr));
    let (digest, _) = raw_digest(&image);
    assert_eq!(raw_digest(&format!("{to}/index/app:v1")).0, digest);
}
