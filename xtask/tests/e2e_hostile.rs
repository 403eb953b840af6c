//! A hostile source registry against the mirror: "digests" built to walk out of the URL
//! path, through an index child and through the referrers of a digest-pinned image. The
//! mirror must refuse them before any request, and write nothing anywhere.

mod support;

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use support::*;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Serves fixed answers by path and records every path asked for.
struct HostileRegistry {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HostileRegistry {
    fn start(routes: HashMap<String, (String, Vec<u8>)>) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                seen.lock().unwrap().push(format!("{method} {path}"));
                let mut stream = stream;
                let route = if path == "/v2/" {
                    Some(("application/json".to_string(), b"{}".to_vec()))
                } else {
                    routes.get(&path).cloned()
                };
                let response = match route {
                    Some((media_type, body)) => {
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {media_type}\r\ncontent-length: {}\r\n\
                             docker-content-digest: {}\r\nconnection: close\r\n\r\n",
                            body.len(),
                            digest(&body)
                        )
                        .into_bytes();
                        if method != "HEAD" {
                            head.extend(body);
                        }
                        head
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        HostileRegistry { addr, requests }
    }

    fn asked_for(&self, needle: &str) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(needle))
    }
}

fn escaping_digest() -> String {
    format!(
        "sha256:{}/../../../../other/repo/manifests/latest",
        "a".repeat(64)
    )
}

fn mirror(source: &str, destination: &Registry) -> std::process::Output {
    xtask(&[
        "images",
        "mirror",
        "--image",
        source,
        "--to",
        &format!("{}/mirror", destination.addr),
    ])
}

fn assert_refused_and_nothing_written(
    out: &std::process::Output,
    hostile: &HostileRegistry,
    destination: &Registry,
) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a hostile digest was followed: {stderr}"
    );
    assert!(
        stderr.contains("is neither a tag nor a digest; refusing to put it in a URL"),
        "{stderr}"
    );
    assert!(
        !hostile.asked_for("other/repo") && !hostile.asked_for(".."),
        "a request carried the hostile path: {:?}",
        hostile.requests.lock().unwrap()
    );
    for repository in ["other/repo", "mirror/other/repo"] {
        let url = destination.url(&format!("/v2/{repository}/manifests/latest"));
        assert_eq!(manifest_status(&url), Some(404), "{repository} was written");
    }
}

#[test]
fn an_index_child_cannot_walk_out_of_the_url_path() {
    if !docker_available() {
        return;
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        escaping_digest()
    );
    let by_digest = format!("/v2/evil/img/manifests/{}", digest(index.as_bytes()));
    let hostile = HostileRegistry::start(HashMap::from([
        (
            "/v2/evil/img/manifests/v1".to_string(),
            (INDEX.to_string(), index.clone().into_bytes()),
        ),
        (by_digest, (INDEX.to_string(), index.into_bytes())),
    ]));
    let destination = Registry::plain();
    let out = mirror(&format!("{}/evil/img:v1", hostile.addr), &destination);
    assert_refused_and_nothing_written(&out, &hostile, &destination);
}

#[test]
fn a_referrer_of_a_pinned_image_cannot_walk_out_of_the_url_path() {
    if !docker_available() {
        return;
    }
    // A valid image, pinned by digest, whose referrers list names the hostile "digest".
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
    let referrers = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":2,"artifactType":"application/vnd.dev.sigstore.bundle"}}]}}"#,
        escaping_digest()
    );
    let hostile = HostileRegistry::start(HashMap::from([
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
        &destination,
    );
    assert_refused_and_nothing_written(&out, &hostile, &destination);
    assert!(
        hostile.asked_for(&format!("referrers/{manifest_digest}")),
        "the referrers were never read, so the test proved nothing: {:?}",
        hostile.requests.lock().unwrap()
    );
}
