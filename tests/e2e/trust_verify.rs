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

pub(crate) const ISSUER: &str = "https://issuer.example.com";
pub(crate) const IDENTITY: &str = "release@example.com";
/// `cosign sign` with key `c` and the local CA's certificate for it (see `local_ca`).
const CERTIFICATE: [&str; 6] = [
    "--key",
    "c.key",
    "--certificate",
    "leaf.pem",
    "--certificate-chain",
    "ca.pem",
];

/// cosign with the keys' password, in `dir`; fails the test on error.
pub(crate) fn cosign(dir: &Path, args: &[&str]) -> String {
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
pub(crate) fn key_pair(dir: &Path, name: &str) {
    cosign(dir, &["generate-key-pair", "--output-key-prefix", name]);
}

/// Signs `registry/repository:v1` by digest, as a release would, with no transparency log.
pub(crate) fn sign(dir: &Path, reference: &str, extra: &[&str]) -> String {
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

/// openssl with `args` (one string, split at spaces) in `dir`; fails the test on error.
pub(crate) fn openssl_in(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A stand-in Rekor key: `dir/rekor.key`, and its public key as DER in `dir/rekor.der`.
pub(crate) fn rekor_key(dir: &Path) {
    openssl_in(
        dir,
        "ecparam -name prime256v1 -genkey -noout -out rekor.key",
    );
    openssl_in(dir, "ec -in rekor.key -pubout -outform DER -out rekor.der");
}

/// A local CA and a code-signing certificate for `NAME.pub`, naming IDENTITY and ISSUER
/// as Fulcio does (both issuer extensions).
pub(crate) fn local_ca(dir: &Path, name: &str) {
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
    sign(keys, &format!("{r}/otherid/app:v1"), &CERTIFICATE);
    sign(keys, &format!("{r}/good/cert:v1"), &CERTIFICATE);
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
    ] {
        toml.push_str(&format!("\n[[image]]\nsource = \"{r}/{repository}\"\n"));
    }
    // Its own rule: every manifest signed, which the index alone is not.
    toml.push_str(&format!(
        "\n[[image]]\nsource = \"{r}/toponly/app:v1\"\n[image.verify]\nkeys = [\"a.pub\"]\nsigned = \"all\"\n"
    ));
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
    assert!(good.contains("verified: the index signed by key"), "{good}");
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
    // As toponly's own rule in the list (which the bundle does not carry) asks.
    args.extend(["--signed", "all"]);
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
            "needs --certificate-identity",
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
fn under_signed_all_an_index_signed_without_its_children_is_refused_until_they_are_signed() {
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
            "--signed",
            "all",
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

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ABC[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The DER bytes of every PEM certificate in `pem`.
pub(crate) fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    let mut ders = Vec::new();
    for block in pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block.split("-----END").next().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(
            file.path(),
            format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        ders.push(out.stdout);
    }
    ders
}

/// A sigstore trusted_root.json naming `ca` (PEM) as Fulcio and `rekor` (DER SPKI) as Rekor.
pub(crate) fn trusted_root(ca: &str, rekor: &[u8]) -> String {
    let certs: Vec<serde_json::Value> = pem_ders(ca)
        .iter()
        .map(|der| serde_json::json!({"rawBytes": base64(der)}))
        .collect();
    serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{"baseUrl": "https://rekor.test", "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": base64(rekor), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                          "validFor": {"start": "2000-01-01T00:00:00Z"}},
            "logId": {"keyId": base64(&sha2::Sha256::digest(rekor))}}],
        "certificateAuthorities": [{"subject": {"organization": "test", "commonName": "fulcio"},
            "uri": "https://fulcio.test", "certChain": {"certificates": certs},
            "validFor": {"start": "2000-01-01T00:00:00Z"}}],
        "ctlogs": [], "timestampAuthorities": []
    })
    .to_string()
}

/// Plays Rekor's log: the SET, by `dir/rekor.key`, over the canonical entry of `body`
/// (base64) at `time` and `index`; with the log's ID (SHA-256 of `dir/rekor.der`).
pub(crate) fn rekor_set(dir: &Path, body: &str, time: i64, index: u64) -> (Vec<u8>, Vec<u8>) {
    let log_id = sha2::Sha256::digest(fs::read(dir.join("rekor.der")).unwrap()).to_vec();
    let canonical = format!(
        r#"{{"body":"{body}","integratedTime":{time},"logID":"{}","logIndex":{index}}}"#,
        hex::encode(&log_id)
    );
    fs::write(dir.join("entry.json"), canonical).unwrap();
    let set = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", "rekor.key", "entry.json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(set.status.success());
    (log_id, set.stdout)
}

/// Plays Rekor for a signature cosign made with a certificate: records a hashedrekord
/// entry at `time` and attaches it, with its SET by `dir/rekor.key`, to the layer.
fn rekor_entry(
    src: &Registry,
    dir: &Path,
    repository: &str,
    digest: &str,
    time: i64,
    tamper: bool,
) {
    let tag = sig_tag(digest);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&get(src, &format!("/v2/{repository}/manifests/{tag}"))).unwrap();
    let layer = &manifest["layers"][0];
    let payload = get(
        src,
        &format!(
            "/v2/{repository}/blobs/{}",
            layer["digest"].as_str().unwrap()
        ),
    );
    let annotations = &layer["annotations"];
    let body = serde_json::json!({"apiVersion": "0.0.1", "kind": "hashedrekord",
        "spec": {"data": {"hash": {"algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(&payload))}},
                 "signature": {"content": annotations["dev.cosignproject.cosign/signature"],
                     "publicKey": {"content": base64(annotations["dev.sigstore.cosign/certificate"].as_str().unwrap().as_bytes())}}}});
    let body = base64(body.to_string().as_bytes());
    let (log_id, set) = rekor_set(dir, &body, time, 1);
    let log_id = hex::encode(log_id);
    // Signed at `time`, shown at another: the SET no longer covers the entry.
    let shown = if tamper { time + 1 } else { time };
    let bundle = serde_json::json!({"SignedEntryTimestamp": base64(&set),
        "Payload": {"body": body, "integratedTime": shown, "logIndex": 1, "logID": log_id}});
    manifest["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"] = bundle.to_string().into();
    push_manifest(src, repository, Some(&tag), &manifest.to_string());
}

#[test]
fn keyless_signatures_verify_against_a_trusted_root_offline() {
    need!(Docker, Registry, Skopeo, Cosign);
    let (src, dst) = (Registry::plain(), Registry::plain());
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    let r = src.addr.clone();
    key_pair(dir, "c");
    local_ca(dir, "c");
    rekor_key(dir);
    openssl_in(
        dir,
        "ecparam -name prime256v1 -genkey -noout -out other.key",
    );
    openssl_in(dir, "req -x509 -new -key other.key -subj /CN=TestCA -days 2 -out other-ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign");
    let rekor = fs::read(dir.join("rekor.der")).unwrap();
    let ca = fs::read_to_string(dir.join("ca.pem")).unwrap();
    fs::write(dir.join("root.json"), trusted_root(&ca, &rekor)).unwrap();
    let other = fs::read_to_string(dir.join("other-ca.pem")).unwrap();
    fs::write(dir.join("other-root.json"), trusted_root(&other, &rekor)).unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // (repository, integratedTime, tampered SET); the leaf is valid from now for a day.
    for (i, (repository, time, tamper)) in [
        ("keyless/good", now + 60, false),
        ("keyless/tampered", now + 60, true),
        ("keyless/early", now - 2 * 86400, false),
        ("keyless/nobundle", 0, false),
    ]
    .into_iter()
    .enumerate()
    {
        tiny_image(&r, &format!("{repository}:v1"), 2000 + i as u64);
        let digest = sign(dir, &format!("{r}/{repository}:v1"), &CERTIFICATE);
        if time != 0 {
            rekor_entry(&src, dir, repository, &digest, time, tamper);
        }
    }
    let root = dir.join("root.json").display().to_string();
    let other_root = dir.join("other-root.json").display().to_string();

    // cosign, the independent party, accepts the fixture. cosign 2.5 reads --trusted-root
    // only for new-format bundles (it fetched Rekor's keys over TUF here), so its offline
    // path: the same CA as a chain and the same Rekor key, the SET checked at its time.
    openssl_in(dir, "ec -in rekor.key -pubout -out rekor.pem");
    let cosign_verify = |repository: &str| {
        Command::new("cosign")
            .args([
                "verify",
                "--certificate-chain",
                "ca.pem",
                "--certificate-identity",
                IDENTITY,
                "--certificate-oidc-issuer",
                ISSUER,
                "--insecure-ignore-sct",
                "--offline",
                "--allow-insecure-registry",
                &format!("{r}/{repository}:v1"),
            ])
            .env("SIGSTORE_REKOR_PUBLIC_KEY", dir.join("rekor.pem"))
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let verified = cosign_verify("keyless/good");
    assert!(
        verified.status.success(),
        "cosign verify: {}",
        text(&verified.stderr)
    );
    let refused = cosign_verify("keyless/tampered");
    assert!(
        !refused.status.success(),
        "cosign refuses the tampered SET too"
    );

    let to = format!("{}/m", dst.addr);
    // `command`, then the keyless policy.
    let keyless = |command: &[&str], root: &str, identity: &str| {
        let mut args = command.to_vec();
        args.extend([
            "--trusted-root",
            root,
            "--certificate-identity",
            identity,
            "--certificate-oidc-issuer",
            ISSUER,
        ]);
        xtask(&args)
    };
    let mirror = |repository: &str, root: &str, identity: &str| {
        let image = format!("{r}/{repository}:v1");
        keyless(
            &["images", "mirror", "--image", &image, "--to", &to],
            root,
            identity,
        )
    };
    for (repository, root, identity, why) in [
        (
            "keyless/good",
            &root,
            "someone-else@example.com",
            "no signature verifies with identity someone-else@example.com",
        ),
        (
            "keyless/tampered",
            &root,
            IDENTITY,
            "SignedEntryTimestamp does not verify",
        ),
        (
            "keyless/good",
            &other_root,
            IDENTITY,
            "does not chain to the trusted root",
        ),
        ("keyless/early", &root, IDENTITY, "was not valid at"),
        (
            "keyless/nobundle",
            &root,
            IDENTITY,
            "no Rekor entry: keyless signatures need one",
        ),
    ] {
        let output = mirror(repository, root, identity);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{repository}: {stderr}");
        let refused: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("REFUSED  "))
            .collect();
        assert_eq!(refused.len(), 1, "{stderr}");
        assert!(refused[0].contains(why), "{repository}: {}", refused[0]);
        dst.assert_empty("a refused keyless signature writes nothing");
    }
    let image = format!("{r}/keyless/good:v1");
    let dry = keyless(
        &[
            "images",
            "mirror",
            "--image",
            &image,
            "--to",
            &to,
            "--dry-run",
        ],
        &root,
        IDENTITY,
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains(&format!("signed by {IDENTITY} (issuer {ISSUER})")),
        "{}",
        text(&dry.stdout)
    );
    dst.assert_empty("--dry-run writes nothing");

    let output = mirror("keyless/good", &root, IDENTITY);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        raw_digest(&format!("{to}/keyless/good:v1")).0,
        raw_digest(&format!("{r}/keyless/good:v1")).0
    );

    // Inside the air gap: a bundle, the source gone.
    let bundle = dir.join("keyless.tar").display().to_string();
    let save = xtask(&[
        "images",
        "mirror",
        "save",
        "--image",
        &format!("{r}/keyless/good:v1"),
        "--out",
        &bundle,
    ]);
    assert!(save.status.success(), "{}", text(&save.stderr));
    drop(src);
    let to = format!("{}/air", dst.addr);
    let load = keyless(
        &["images", "mirror", "load", &bundle, "--to", &to],
        &root,
        IDENTITY,
    );
    assert!(load.status.success(), "{}", text(&load.stderr));
    let to = format!("{}/air2", dst.addr);
    let load = keyless(
        &["images", "mirror", "load", &bundle, "--to", &to],
        &other_root,
        IDENTITY,
    );
    let stderr = text(&load.stderr);
    assert!(
        !load.status.success() && stderr.contains("does not chain to the trusted root"),
        "{stderr}"
    );
    assert!(
        !dst.tags().iter().any(|t| t.starts_with("air2/")),
        "{:?}",
        dst.tags()
    );
}
