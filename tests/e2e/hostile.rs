//! Hostile servers against the mirror. "Digests" built to walk out of the URL path
//! (through an index child and through the referrers of a digest-pinned image) are
//! refused before any request, and nothing is written anywhere. A sha512 pin or blob
//! digest is checked with sha512. Credentials never follow an upload location or a
//! token realm to another party, and a relaxed TLS client never reaches past its host.
//! Oversized answers are refused unread, a server that drips cannot hold a run past
//! `--timeout`, and error text carries no presigned URL, session state or terminal
//! control character. A body cut short by a source that ignores Range is read again,
//! skipping what was already sent.

use crate::support::scripted::{Body, Reply, Scripted, Seen};
use crate::support::*;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A registry serving fixed answers by path (200 with the digest header, or 404).
fn fixed_routes(routes: HashMap<String, (String, Vec<u8>)>) -> Scripted {
    Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.path == "/v2/" {
                return Reply::new(200);
            }
            match routes.get(&request.path) {
                Some((media_type, body)) => Reply::content(media_type, body),
                None => Reply::new(404),
            }
        }),
    )
}

fn asked_for(server: &Scripted, needle: &str) -> bool {
    server
        .requests()
        .iter()
        .any(|r| format!("{} {}", r.method, r.path).contains(needle))
}

fn escaping_digest() -> String {
    format!(
        "sha256:{}/../../../../other/repo/manifests/latest",
        "a".repeat(64)
    )
}

/// `images mirror --image SOURCE --to TO/m`, with `extra` flags and, when given, the
/// Docker config in `config`.
fn mirror(
    source: &str,
    to: &str,
    extra: &[&str],
    config: Option<&tempfile::TempDir>,
) -> std::process::Output {
    let destination = format!("{to}/m");
    let mut args = vec!["images", "mirror", "--image", source, "--to", &destination];
    args.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = config
        .map(|c| ("DOCKER_CONFIG", c.path().to_str().unwrap()))
        .into_iter()
        .collect();
    xtask_in(&project_root(), &args, &env)
}

/// Refused before any request with the hostile path, and nothing at the destination:
/// what hangs on an image is read before any of it is written.
fn assert_refused_and_nothing_written(
    out: &std::process::Output,
    hostile: &Scripted,
    destination: &Registry,
) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a hostile digest was followed: {stderr}"
    );
    assert!(
        stderr.contains("is not a digest: sha256 needs 64 lower-case hex digits"),
        "{stderr}"
    );
    assert!(
        !asked_for(hostile, "other/repo") && !asked_for(hostile, ".."),
        "a request carried the hostile path: {:?}",
        hostile.requests()
    );
    destination.assert_empty("something was written");
}

#[test]
fn an_index_child_cannot_walk_out_of_the_url_path() {
    need!(Registry);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        escaping_digest()
    );
    let by_digest = format!("/v2/evil/img/manifests/{}", digest(index.as_bytes()));
    let hostile = fixed_routes(HashMap::from([
        (
            "/v2/evil/img/manifests/v1".to_string(),
            (INDEX.to_string(), index.clone().into_bytes()),
        ),
        (by_digest, (INDEX.to_string(), index.into_bytes())),
    ]));
    let destination = Registry::plain();
    let out = mirror(
        &format!("{}/evil/img:v1", hostile.addr),
        &destination.addr,
        &[],
        None,
    );
    assert_refused_and_nothing_written(&out, &hostile, &destination);
}

#[test]
fn a_referrer_of_a_pinned_image_cannot_walk_out_of_the_url_path() {
    need!(Registry);
    // A valid image, pinned by digest, whose referrers list names the hostile "digest".
    let (manifest, manifest_digest, config) = tiny_image();
    let referrers = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":2,"artifactType":"application/vnd.dev.sigstore.bundle"}}]}}"#,
        escaping_digest()
    );
    let hostile = fixed_routes(HashMap::from([
        (
            format!("/v2/evil/img/manifests/{manifest_digest}"),
            (MANIFEST.to_string(), manifest),
        ),
        (
            format!("/v2/evil/img/blobs/{}", digest(&config)),
            ("application/octet-stream".to_string(), config.clone()),
        ),
        (
            format!("/v2/evil/img/referrers/{manifest_digest}"),
            (INDEX.to_string(), referrers.into_bytes()),
        ),
    ]));
    let destination = Registry::plain();
    let out = mirror(
        &format!("{}/evil/img@{manifest_digest}", hostile.addr),
        &destination.addr,
        &[],
        None,
    );
    assert_refused_and_nothing_written(&out, &hostile, &destination);
    assert!(
        asked_for(&hostile, &format!("referrers/{manifest_digest}")),
        "the referrers were never read, so the test proved nothing: {:?}",
        hostile.requests()
    );
}

// ---- Finding 3: credentials stay with their origin; the relaxed TLS client with its host.

const SECRET_PASSWORD: &str = "pw-that-must-stay-home-7";

/// A one-layer image (config only), as manifest bytes, its digest, and the config.
fn tiny_image() -> (Vec<u8>, String, Vec<u8>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
        digest(&config),
        config.len()
    )
    .into_bytes();
    let manifest_digest = digest(&manifest);
    (manifest, manifest_digest, config)
}

/// Answers for the tiny image under `evil/img`: tag v1, by digest, and its config blob.
fn serve_tiny_image(request: &Seen) -> Option<Reply> {
    let (manifest, manifest_digest, config) = tiny_image();
    let path = request.path.split('?').next().unwrap_or("");
    if path == "/v2/" {
        return Some(Reply::new(200));
    }
    if path == "/v2/evil/img/manifests/v1"
        || path == format!("/v2/evil/img/manifests/{manifest_digest}")
    {
        return Some(Reply::content(MANIFEST, &manifest));
    }
    if path == format!("/v2/evil/img/blobs/{}", digest(&config)) {
        return Some(Reply::content("application/octet-stream", &config));
    }
    None
}

/// A Docker config that holds `host`'s credentials.
fn docker_config_for(host: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = run(
        "sh",
        &[
            "-c",
            &format!("printf '%s' 'bot:{SECRET_PASSWORD}' | base64 -w0"),
        ],
    );
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn credentials_never_follow_an_upload_location_to_another_origin() {
    need!(OtherAddress);
    let elsewhere = Scripted::start(&other_host(), Box::new(|_| Reply::new(404)));
    let upload_to = format!(
        "http://{}/upload?_state=SESSION-STATE-SECRET",
        elsewhere.addr
    );
    let destination = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.header("authorization").is_none() {
                return Reply::new(401).header("www-authenticate", r#"Basic realm="test""#);
            }
            match request.method.as_str() {
                "POST" if request.path.contains("/blobs/uploads/") => {
                    Reply::new(202).header("location", &upload_to)
                }
                "GET" if request.path == "/v2/" => Reply::new(200),
                _ => Reply::new(404),
            }
        }),
    );
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(|r| serve_tiny_image(r).unwrap_or(Reply::new(404))),
    );
    let config = docker_config_for(&destination.addr);
    let out = mirror(
        &format!("{}/evil/img:v1", source.addr),
        &destination.addr,
        &[],
        Some(&config),
    );
    let output = output_text(&out);
    assert!(!out.status.success(), "{output}");
    let upload_requests = elsewhere.requests();
    assert!(
        !upload_requests.is_empty(),
        "the upload location was never used, so this proved nothing: {output}"
    );
    for request in &upload_requests {
        assert_eq!(
            request.header("authorization"),
            None,
            "credentials went to another origin: {request:?}"
        );
    }
    assert!(
        destination
            .requests()
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "the destination itself never got its credentials"
    );
    assert!(!output.contains(SECRET_PASSWORD), "{output}");
    assert!(!output.contains("SESSION-STATE-SECRET"), "{output}");
}

#[test]
fn credentials_never_follow_a_token_realm_out_of_the_registry_domain() {
    need!(Registry, OtherAddress);
    let realm = Scripted::start(
        &other_host(),
        Box::new(|_| {
            Reply::new(200)
                .header("content-type", "application/json")
                .body(Body::Bytes(br#"{"token":"anonymous-pull-token"}"#.to_vec()))
        }),
    );
    let challenge = format!(
        r#"Bearer realm="http://{}/token",service="evil""#,
        realm.addr
    );
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.header("authorization") != Some("Bearer anonymous-pull-token") {
                return Reply::new(401).header("www-authenticate", &challenge);
            }
            serve_tiny_image(request).unwrap_or(Reply::new(404))
        }),
    );
    let destination = Registry::plain();
    let config = docker_config_for(&source.addr);
    let out = mirror(
        &format!("{}/evil/img:v1", source.addr),
        &destination.addr,
        &[],
        Some(&config),
    );
    let output = output_text(&out);
    // The token service is another party: it is asked anonymously, which is enough here.
    assert!(out.status.success(), "{output}");
    let token_requests = realm.requests();
    assert!(
        !token_requests.is_empty(),
        "no token was asked for: {output}"
    );
    for request in &token_requests {
        assert_eq!(
            request.header("authorization"),
            None,
            "credentials went to a token service outside the registry: {request:?}"
        );
        assert!(!request.path.contains("refresh_token"), "{request:?}");
    }
    assert!(!output.contains(SECRET_PASSWORD), "{output}");
}

/// `openssl s_server` with a self-signed certificate on `ip`, serving a page for any GET.
struct TlsServer {
    addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    fn start(ip: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        self_signed_cert(&cert, &key, ip);
        let port = free_port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("{ip}:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsServer {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_redirect_from_a_relaxed_registry_gets_verified_tls() {
    need!(Registry, OtherAddress);
    // The loopback registry may skip verification; the CDN it redirects to may not.
    let cdn = TlsServer::start(&other_host());
    let (_, _, config) = tiny_image();
    let blob_path = format!("/v2/evil/img/blobs/{}", digest(&config));
    let redirect = format!("https://{}/cdn/blob", cdn.addr);
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.path == blob_path && request.method == "GET" {
                return Reply::new(307).header("location", &redirect);
            }
            serve_tiny_image(request).unwrap_or(Reply::new(404))
        }),
    );
    let destination = Registry::plain();
    let out = mirror(
        &format!("{}/evil/img:v1", source.addr),
        &destination.addr,
        &[],
        None,
    );
    let output = output_text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains("certificate") && !output.contains("digest mismatch"),
        "the CDN's certificate was not checked: {output}"
    );
}

#[test]
fn an_unreachable_registry_gets_the_hint_its_failure_calls_for() {
    need!(Registry, OtherAddress);
    let destination = Registry::plain();
    // Off loopback TLS is verified, so only a failed handshake may suggest --insecure.
    let self_signed = TlsServer::start(&other_host());
    let closed = format!("{}:{}", other_host(), free_port());
    let unresolvable = "registry.invalid".to_string();
    for (source, hint) in [
        (
            self_signed.addr.clone(),
            format!("pass --insecure {}", self_signed.addr),
        ),
        (closed, "nothing listens there".to_string()),
        (
            unresolvable,
            "the name registry.invalid does not resolve".to_string(),
        ),
    ] {
        let out = mirror(
            &format!("{source}/app/img:v1"),
            &destination.addr,
            &[],
            None,
        );
        let stderr = text(&out.stderr);
        let failed = format!("{source}/app/img:v1: registry {source} is unreachable");
        let line = stderr
            .lines()
            .find(|l| l.contains(&failed))
            .unwrap_or_default();
        assert!(!out.status.success(), "{stderr}");
        assert!(line.contains(&hint), "expected '{hint}': {stderr}");
        assert_eq!(
            line.contains("--insecure"),
            hint.contains("--insecure"),
            "{stderr}"
        );
    }
}

// ---- Finding 4: nothing a server sends is read without a bound.

#[test]
fn oversized_answers_are_refused_unread() {
    need!(Registry);
    const HUGE: u64 = 256 << 20;
    let (_, manifest_digest, _) = tiny_image();
    let hostile = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            let path = request.path.split('?').next().unwrap_or("");
            match path {
                p if p.starts_with("/v2/big/manifest/manifests/") => Reply::new(200)
                    .header("content-type", MANIFEST)
                    .header("docker-content-digest", &digest(b"huge"))
                    .body(Body::Endless(HUGE)),
                p if p.starts_with("/v2/big/error/manifests/") => match request.method.as_str() {
                    "HEAD" => Reply::content(MANIFEST, &tiny_image().0),
                    _ => Reply::new(404).body(Body::Endless(HUGE)),
                },
                p if p.starts_with("/v2/evil/img/referrers/") => Reply::new(200)
                    .header("content-type", INDEX)
                    .body(Body::Endless(HUGE)),
                _ => serve_tiny_image(request).unwrap_or(Reply::new(404)),
            }
        }),
    );
    // A token service on the registry's own host that answers with no end.
    let token_realm: Arc<Mutex<String>> = Arc::default();
    let realm = token_realm.clone();
    let tokens = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.path.starts_with("/token") {
                return Reply::new(200).body(Body::Endless(HUGE));
            }
            let challenge = format!(r#"Bearer realm="{}""#, realm.lock().unwrap());
            Reply::new(401).header("www-authenticate", &challenge)
        }),
    );
    *token_realm.lock().unwrap() = format!("http://{}/token", tokens.addr);
    let destination = Registry::plain();
    for (source, expected) in [
        (
            format!("{}/big/manifest:v1", hostile.addr),
            "larger than the 4194304-byte limit",
        ),
        (
            format!("{}/evil/img@{manifest_digest}", hostile.addr),
            "larger than the 4194304-byte limit",
        ),
        (
            format!("{}/tokens/img:v1", tokens.addr),
            "larger than the 1048576-byte limit",
        ),
        (format!("{}/big/error:v1", hostile.addr), "404"),
    ] {
        let server = if source.contains("tokens") {
            &tokens
        } else {
            &hostile
        };
        let before = server.written.load(std::sync::atomic::Ordering::Relaxed);
        let out = mirror(&source, &destination.addr, &[], None);
        let output = output_text(&out);
        assert!(!out.status.success(), "{source}: {output}");
        assert!(output.contains(expected), "{source}: {output}");
        // Give the server a moment to notice the closed connection.
        std::thread::sleep(Duration::from_millis(200));
        let read = server.written.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            read < 64 << 20,
            "{source}: {read} bytes were sent before the client stopped"
        );
        assert!(output.lines().count() <= 3, "{source}: {output}");
    }
}

// ---- Finding 9: a deadline holds against a server that drips.

#[test]
fn a_drip_fed_manifest_cannot_hold_the_run_past_its_timeout() {
    need!(Registry);
    let (manifest, _, _) = tiny_image();
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            let reply = serve_tiny_image(request).unwrap_or(Reply::new(404));
            if request.method == "GET" && request.path.contains("/manifests/") {
                return Reply {
                    body: Body::Drip(manifest.clone(), Duration::from_secs(1)),
                    ..reply
                };
            }
            reply
        }),
    );
    let destination = Registry::plain();
    let started = Instant::now();
    let out = mirror(
        &format!("{}/evil/img:v1", source.addr),
        &destination.addr,
        &["--timeout", "3s"],
        None,
    );
    let output = output_text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains("stopped at the --timeout of 3s"),
        "{output}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    destination.assert_empty("something was written for an image cut short");
}

// ---- Finding 10: error text carries no URLs, session state or control characters.

#[test]
fn errors_carry_no_presigned_urls_or_terminal_control_characters() {
    need!(Registry);
    let closed = free_port();
    let (_, _, config) = tiny_image();
    let blob_path = format!("/v2/evil/img/blobs/{}", digest(&config));
    let presigned = format!(
        "http://127.0.0.1:{closed}/cdn/blob?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=PRESIGNED-SECRET"
    );
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.path == blob_path && request.method == "GET" {
                return Reply::new(307).header("location", &presigned);
            }
            if request.path.starts_with("/v2/evil/denied/") && request.method == "HEAD" {
                return Reply::content(MANIFEST, &tiny_image().0);
            }
            if request.path.starts_with("/v2/evil/denied/") {
                let body = "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"\\u001b[2J\\u001b]0;pwned\\u0007 go away\"}]}";
                return Reply::new(403).body(Body::Bytes(body.as_bytes().to_vec()));
            }
            serve_tiny_image(request).unwrap_or(Reply::new(404))
        }),
    );
    let destination = Registry::plain();
    for image in ["evil/img:v1", "evil/denied:v1"] {
        let out = mirror(
            &format!("{}/{image}", source.addr),
            &destination.addr,
            &[],
            None,
        );
        let output = output_text(&out);
        assert!(!out.status.success(), "{output}");
        let failure = if image.contains("denied") {
            "go away"
        } else {
            "cannot connect"
        };
        assert!(
            output.contains(failure),
            "not the failure under test: {output}"
        );
        assert!(
            !output.contains("PRESIGNED-SECRET") && !output.contains("X-Amz"),
            "{output}"
        );
        assert!(
            !output.contains('\u{1b}') && !output.contains('\u{7}'),
            "{output:?}"
        );
    }
}

// ---- Finding 2: a sha512 pin is checked with sha512.

#[test]
fn sha512_pins_and_blobs_with_other_content_are_refused() {
    need!(Registry);
    use sha2::Sha512;
    let (manifest, _, _) = tiny_image();
    // The pin names other bytes; the source serves the tiny image under it anyway.
    let pin = format!(
        "sha512:{}",
        hex::encode(Sha512::digest(b"the image the user meant"))
    );
    let served_pin = pin.clone();
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.path == format!("/v2/evil/img/manifests/{served_pin}") {
                // The registry vouches for the pin, as a hostile one would.
                return Reply::new(200)
                    .header("content-type", MANIFEST)
                    .header("docker-content-digest", &served_pin)
                    .body(Body::Bytes(manifest.clone()));
            }
            serve_tiny_image(request).unwrap_or(Reply::new(404))
        }),
    );
    let destination = Registry::plain();
    let refused_and_nothing_pushed = |image: String| {
        let out = mirror(&image, &destination.addr, &[], None);
        let output = output_text(&out);
        assert!(!out.status.success(), "{image} was accepted: {output}");
        assert!(output.contains("digest mismatch"), "{output}");
        destination.assert_empty("something was pushed");
    };
    refused_and_nothing_pushed(format!("{}/evil/img@{pin}", source.addr));
    assert!(
        source
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(&pin)),
        "the pinned manifest was never fetched, so this proved nothing"
    );

    // A blob named by sha512 whose bytes are other than it says: never committed.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let claimed = format!("sha512:{}", hex::encode(Sha512::digest(b"another config")));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{claimed}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    let blob_path = format!("/v2/evil/blob/blobs/{claimed}");
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| match request.path.as_str() {
            "/v2/" => Reply::new(200),
            p if p.starts_with("/v2/evil/blob/manifests/") => {
                Reply::content(MANIFEST, manifest.as_bytes())
            }
            p if p == blob_path => Reply::content("application/octet-stream", config),
            _ => Reply::new(404),
        }),
    );
    refused_and_nothing_pushed(format!("{}/evil/blob:v1", source.addr));
}

// ---- Bad networks: a source that ignores Range is read again, skipping what was sent.

#[test]
fn a_cut_body_from_a_source_that_ignores_range_is_read_again() {
    need!(Registry);
    let (_, _, config) = tiny_image();
    let half = config.len() / 2;
    let blob_path = format!("/v2/evil/img/blobs/{}", digest(&config));
    let gets = Arc::new(Mutex::new(0));
    let counter = gets.clone();
    let source = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            let reply = serve_tiny_image(request).unwrap_or(Reply::new(404));
            if request.path == blob_path && request.method == "GET" {
                let mut n = counter.lock().unwrap();
                *n += 1;
                // The first body breaks off half-way; later ones ignore Range (a 200).
                if *n == 1 {
                    return Reply {
                        body: Body::Cut(config.clone(), half),
                        ..reply
                    };
                }
            }
            reply
        }),
    );
    let destination = Registry::plain();
    let out = mirror(
        &format!("{}/evil/img:v1", source.addr),
        &destination.addr,
        &["--json"],
        None,
    );
    let output = output_text(&out);
    assert!(out.status.success(), "{output}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["restarts"], 1, "{summary}");
    assert_eq!(summary["resumed_reads"], 1, "{summary}");
    let resumed = source.requests();
    assert!(
        resumed
            .iter()
            .any(|r| r.header("range") == Some(&format!("bytes={half}-"))),
        "the second GET did not ask for the rest: {resumed:?}"
    );
    assert_eq!(
        manifest_status(&destination.url("/v2/m/evil/img/manifests/v1")),
        Some(200)
    );
}
