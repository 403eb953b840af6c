//! Tag sets: a list entry (or `--image REPO --tags-semver RANGE`) that mirrors the tags a
//! semver range selects from the registry's tag list. Against the real distribution
//! registry, with skopeo judging the copies; pagination and hostile tag lists against
//! scripted registries.

use crate::support::scripted::{Body, Reply, Scripted};
use crate::support::upload::{push_tagged, IMAGE_CONFIG};
use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";

fn images_mirror(args: &[&str]) -> std::process::Output {
    let mut all = vec!["images", "mirror"];
    all.extend_from_slice(args);
    xtask(&all)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The source: an app with releases, a pre-release and tags that are no version, and a
/// chart with versions without `v`.
fn source_with_releases() -> Registry {
    let src = Registry::plain();
    let signature = format!("sha256-{}.sig", "ab".repeat(32));
    for tag in [
        "v0.1.2",
        "v0.1.3",
        "v0.1.7",
        "v0.2.0",
        "v0.1.8-rc.1",
        "latest",
        signature.as_str(),
    ] {
        push_tagged(&src, "k/app", tag, IMAGE_CONFIG);
    }
    for tag in ["0.1.3", "0.1.7", "0.2.0"] {
        push_tagged(&src, "k/chart", tag, HELM_CONFIG);
    }
    src
}

fn tag_set_list(dir: &Path, src: &str) -> String {
    let path = dir.join("sets.toml");
    fs::write(
        &path,
        format!(
            "description = \"tag sets\"\n\
             [[image]]\nsource = \"{src}/k/app\"\ntags = {{ semver = \">=0.1.3, <0.2.0\" }}\n\
             helm = [\"controller.image\"]\n\
             [[image]]\nsource = \"{src}/k/chart\"\ntags = {{ semver = \">=0.1.3, <0.2.0\", newest = 1 }}\n\
             helm_chart = {{ release = \"demo\", namespace = \"demo-system\" }}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn a_tag_set_mirrors_exactly_the_tags_it_selects_and_skopeo_agrees() {
    need!(Registry, Skopeo);
    let (src, dst) = (source_with_releases(), Registry::plain());
    let work = tempfile::tempdir().unwrap();
    let list = tag_set_list(work.path(), &src.addr);
    let prefix = format!("{}/m", dst.addr);

    // The dry run names what each set resolved to, and writes nothing.
    let plan = succeeded(&images_mirror(&[&list, "--to", &prefix, "--dry-run"]));
    let app_line = format!(
        "# tags of {}/k/app (semver >=0.1.3, <0.2.0): v0.1.3, v0.1.7\n",
        src.addr
    );
    let chart_line = format!(
        "# tags of {}/k/chart (semver >=0.1.3, <0.2.0, newest 1): 0.1.7\n",
        src.addr
    );
    assert!(
        plan.contains(&app_line) && plan.contains(&chart_line),
        "{plan}"
    );
    for tag in ["v0.1.2", "v0.2.0", "rc.1", "latest", ".sig"] {
        assert!(!plan.contains(&format!("k/app:{tag}")), "{tag}: {plan}");
    }
    dst.assert_empty("the dry run wrote something");

    // The copy takes exactly those tags, and the cluster is pointed at the newest.
    let config_dir = work.path().join("cluster");
    let out = images_mirror(&[
        &list,
        "--to",
        &prefix,
        "--json",
        "--write-config",
        config_dir.to_str().unwrap(),
    ]);
    succeeded(&out);
    assert_eq!(
        dst.tags().into_iter().collect::<BTreeSet<_>>(),
        set(&["m/k/app:v0.1.3", "m/k/app:v0.1.7", "m/k/chart:0.1.7"])
    );
    assert_eq!(
        skopeo_tags(&format!("{prefix}/k/app")),
        set(&["v0.1.3", "v0.1.7"])
    );
    assert_eq!(skopeo_tags(&format!("{prefix}/k/chart")), set(&["0.1.7"]));
    for (repository, tag) in [
        ("k/app", "v0.1.3"),
        ("k/app", "v0.1.7"),
        ("k/chart", "0.1.7"),
    ] {
        let source = skopeo_inspect("--raw", &format!("{}/{repository}:{tag}", src.addr));
        let copy = skopeo_inspect("--raw", &format!("{prefix}/{repository}:{tag}"));
        assert_eq!(source, copy, "{repository}:{tag}");
    }
    let values = fs::read_to_string(config_dir.join("helm/kubeopencode-values.yaml")).unwrap();
    assert!(
        values.contains("tag: v0.1.7@sha256:") && !values.contains("v0.1.3"),
        "{values}"
    );
    let script = fs::read_to_string(config_dir.join("helm/install.sh")).unwrap();
    assert_eq!(script.matches("helm install").count(), 1, "{script}");
    assert!(script.contains("--version '0.1.7'"), "{script}");
    let mapping = fs::read_to_string(config_dir.join("mapping.txt")).unwrap();
    let mapped = mapping.lines().filter(|l| !l.starts_with('#'));
    assert_eq!(mapped.count(), 3, "{mapping}");

    // `mirror save` resolves the same sets to the same tags.
    let bundle = work.path().join("bundle.tar");
    let save = xtask(&[
        "images",
        "mirror",
        "save",
        &list,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    succeeded(&save);
    let index = run("tar", &["-xOf", bundle.to_str().unwrap(), "index.json"]);
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let names: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(String::from)
        .collect();
    let source_refs: Vec<String> = ["k/app:v0.1.3", "k/app:v0.1.7", "k/chart:0.1.7"]
        .iter()
        .map(|r| format!("{}/{r}", src.addr))
        .collect();
    assert_eq!(
        names,
        source_refs.iter().cloned().collect::<BTreeSet<_>>(),
        "{index}"
    );
}

#[test]
fn the_command_line_takes_a_repository_and_a_range_naming_a_pre_release() {
    need!(Registry, Skopeo);
    let (src, dst) = (source_with_releases(), Registry::plain());
    let repository = format!("{}/k/app", src.addr);
    let prefix = format!("{}/m", dst.addr);
    let out = images_mirror(&[
        "--image",
        &repository,
        "--tags-semver",
        ">=0.1.8-rc.0, <0.2.0",
        "--to",
        &prefix,
        "--dry-run",
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    let sources: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [format!("{repository}:v0.1.8-rc.1")], "{plan}");
    assert_eq!(plan[0]["tag_set"], "semver >=0.1.8-rc.0, <0.2.0", "{plan}");

    // Bad input is one line naming what is wrong and the fix; nothing is written.
    for (args, want) in [
        (
            vec!["--image", &repository, "--tags-semver", ">=0.1.3 <<0.2"],
            "--tags-semver: '>=0.1.3 <<0.2' is not a semver range",
        ),
        (
            vec!["--image", "127.0.0.1:1/k/app:v1", "--tags-semver", ">=0.1"],
            "names a tag or digest, and --tags-semver selects the tags",
        ),
        (
            vec!["--image", &repository, "--tags-semver", ">=9"],
            "selects none of the 7 tags",
        ),
    ] {
        let out = images_mirror(&[&args[..], &["--to", &prefix]].concat());
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    dst.assert_empty("bad input wrote something");
}

/// A fake registry whose tag list `page(query)` answers: (body, Link header).
fn tag_list_server(
    ip: &str,
    page: impl Fn(&str) -> (Vec<u8>, Option<String>) + Send + Sync + 'static,
) -> Scripted {
    Scripted::start(
        ip,
        Box::new(move |request| {
            let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
            if path == "/v2/" {
                return Reply::new(200);
            }
            if path != "/v2/k/app/tags/list" {
                return Reply::new(404);
            }
            let (body, link) = page(query);
            let reply = Reply::new(200).header("content-type", "application/json");
            let reply = match link {
                Some(link) => reply.header("link", &link),
                None => reply,
            };
            reply.body(Body::Bytes(body))
        }),
    )
}

fn tags_json(tags: &[&str]) -> Vec<u8> {
    serde_json::json!({"name": "k/app", "tags": tags})
        .to_string()
        .into_bytes()
}

/// A dry run of `--image ADDR/k/app --tags-semver '>=0.0.0' --to TO`. The hostile
/// cases fail before any destination is asked, so theirs is a closed port.
fn dry_run_to(addr: &str, to: &str) -> std::process::Output {
    images_mirror(&[
        "--image",
        &format!("{addr}/k/app"),
        "--tags-semver",
        ">=0.0.0",
        "--to",
        to,
        "--dry-run",
    ])
}

fn dry_run_of(addr: &str) -> std::process::Output {
    dry_run_to(addr, "127.0.0.1:1/m")
}

#[test]
fn every_page_of_a_tag_list_is_read() {
    need!(Registry);
    let dst = Registry::plain();
    // distribution's own format: a relative next link carrying n and last.
    let registry = tag_list_server("127.0.0.1", |query| match query {
        "" => (
            tags_json(&["latest", "v0.1.1"]),
            Some(r#"</v2/k/app/tags/list?last=v0.1.1&n=2>; rel="next""#.into()),
        ),
        "last=v0.1.1&n=2" => (
            tags_json(&["v0.1.2", "v0.1.3"]),
            Some(r#"</v2/k/app/tags/list?last=v0.1.3&n=2>; rel="next""#.into()),
        ),
        "last=v0.1.3&n=2" => (tags_json(&["v0.2.0"]), None),
        _ => (b"unexpected".to_vec(), None),
    });
    let out = dry_run_to(&registry.addr, &format!("{}/m", dst.addr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "# tags of {}/k/app (semver >=0.0.0): v0.1.1, v0.1.2, v0.1.3, v0.2.0\n",
            registry.addr
        )),
        "{stdout}{}",
        text(&out.stderr)
    );
    let pages: Vec<String> = registry
        .requests()
        .iter()
        .filter(|r| r.path.contains("/tags/list"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
}

/// The run fails with one line that contains `want`.
fn assert_refused(out: &std::process::Output, want: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(want), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_hostile_tag_list_is_refused_in_one_line() {
    let not_utf8 = tag_list_server("127.0.0.1", |_| {
        (b"{\"tags\":[\"v1.0.0\xff\"]}".to_vec(), None)
    });
    assert_refused(&dry_run_of(&not_utf8.addr), "the answer is not UTF-8");

    let not_json = tag_list_server("127.0.0.1", |_| (b"<html>hi</html>".to_vec(), None));
    assert_refused(&dry_run_of(&not_json.addr), "is not a JSON tag list");

    // Not versions, so a list read whole would fail fast on selecting none of them.
    let many: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let many = serde_json::json!({"name": "k/app", "tags": many}).to_string();
    let flood = tag_list_server("127.0.0.1", move |_| (many.clone().into_bytes(), None));
    assert_refused(
        &dry_run_of(&flood.addr),
        "more than 10000 tags; refusing the list",
    );

    let looping = tag_list_server("127.0.0.1", |query| {
        let next = if query.is_empty() { "?last=b" } else { "" };
        (
            tags_json(&["v0.1.0"]),
            Some(format!(r#"</v2/k/app/tags/list{next}>; rel="next""#)),
        )
    });
    assert_refused(&dry_run_of(&looping.addr), "(a pagination loop)");
    let pages = looping.requests().into_iter();
    let pages = pages.filter(|r| r.path.contains("/tags/list"));
    assert_eq!(pages.count(), 2, "{:?}", looping.requests());

    let elsewhere_here = tag_list_server("127.0.0.1", |_| {
        let next = r#"</v2/other/secret/tags/list?last=v0.1.0>; rel="next""#;
        (tags_json(&["v0.1.0"]), Some(next.into()))
    });
    assert_refused(
        &dry_run_of(&elsewhere_here.addr),
        "the next page is not this repository's tag list",
    );

    let not_a_tag = tag_list_server("127.0.0.1", |_| (tags_json(&["../../etc"]), None));
    assert_refused(
        &dry_run_of(&not_a_tag.addr),
        "which is not a tag; refusing the list",
    );
}

#[test]
fn a_next_page_on_another_host_is_refused_and_gets_no_credentials() {
    need!(OtherAddress);
    let elsewhere = Scripted::start(&other_host(), Box::new(|_| Reply::new(200)));
    let next = format!(
        r#"<http://{}/v2/k/app/tags/list?last=v0.1.0>; rel="next""#,
        elsewhere.addr
    );
    let registry = Scripted::start(
        "127.0.0.1",
        Box::new(move |request| {
            if request.header("authorization").is_none() {
                return Reply::new(401).header("www-authenticate", r#"Basic realm="test""#);
            }
            match request.path.as_str() {
                "/v2/" => Reply::new(200),
                "/v2/k/app/tags/list" => Reply::new(200)
                    .header("link", &next)
                    .body(Body::Bytes(tags_json(&["v0.1.0"]))),
                _ => Reply::new(404),
            }
        }),
    );
    let config = tempfile::tempdir().unwrap();
    let auth = run(
        "sh",
        &["-c", "printf '%s' 'bot:tags-secret-9' | base64 -w0"],
    );
    fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .unwrap();
    let out = xtask_in(
        &project_root(),
        &[
            "images",
            "mirror",
            "--image",
            &format!("{}/k/app", registry.addr),
            "--tags-semver",
            ">=0.0.0",
            "--to",
            "127.0.0.1:1/m",
            "--dry-run",
        ],
        &[("DOCKER_CONFIG", config.path().to_str().unwrap())],
    );
    assert_refused(&out, "the next page is on another origin");
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path == "/v2/k/app/tags/list" && r.header("authorization").is_some()),
        "the registry never got its credentials, so this proved nothing"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the other host was asked: {:?}",
        elsewhere.requests()
    );
    assert!(!text(&out.stderr).contains("tags-secret-9"));
}
