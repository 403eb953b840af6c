//! Per-host request budgets, seen from the registry's side: a recording proxy in front
//! of the source stamps when each request arrived and when its answer's head was out.

use crate::support::fixture::*;
use crate::support::proxy::{Action, Logged, Proxy};
use crate::support::*;
use std::time::{Duration, Instant};

const RATE: usize = 5;

/// Requests with an HTTP method: the TLS try of a plain-HTTP loopback host reaches the
/// proxy as bytes that are not one.
fn http_requests(log: Vec<Logged>) -> Vec<Logged> {
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    log.into_iter()
        .filter(|r| methods.contains(&r.method.as_str()))
        .collect()
}

/// The most requests awaiting their answer at the proxy at once.
fn most_in_flight(log: &[Logged]) -> usize {
    log.iter()
        .map(|r| {
            log.iter()
                .filter(|o| o.arrived <= r.arrived && o.answered.is_none_or(|a| a > r.arrived))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The most arrivals in any one-second window.
fn busiest_second(log: &[Logged]) -> usize {
    log.iter()
        .map(|r| {
            log.iter()
                .filter(|o| {
                    o.arrived >= r.arrived && o.arrived < r.arrived + Duration::from_secs(1)
                })
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn gaps_ms(log: &[Logged]) -> Vec<u128> {
    let mut arrivals: Vec<Instant> = log.iter().map(|r| r.arrived).collect();
    arrivals.sort();
    arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect()
}

#[test]
fn a_host_budget_holds_at_the_registry_and_a_429_pauses_it_once() {
    need!(Docker, Registry, Skopeo);
    // Built before any run is timed.
    xtask_binary();
    let (src, dst) = source_and_destination(&["fixture/app"]);
    // Every answer 40 ms late, so requests sent together overlap at the proxy; the
    // first tag HEAD of each run is a 429 asking for a one-second pause.
    let proxy = Proxy::start(
        &src.addr,
        Box::new(|method, path, n| match (method, n) {
            ("HEAD", 0) if path.ends_with("/manifests/v1") => {
                Action::Respond(429, vec![("Retry-After".into(), "1".into())])
            }
            _ => Action::Delay(Duration::from_millis(40)),
        }),
    );
    let source = format!("{}/fixture/app:v1", proxy.addr);
    let run = |prefix: &str, limits: &[&str]| {
        proxy.clear();
        let to = format!("{}/{prefix}", dst.addr);
        let mut args = vec![
            "images", "mirror", "--image", &source, "--to", &to, "--jobs", "2",
        ];
        args.extend_from_slice(limits);
        let started = Instant::now();
        let output = xtask(&args);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_same_tree(
            &format!("{}/fixture/app:v1", src.addr),
            &format!("{to}/fixture/app:v1"),
        );
        (http_requests(proxy.log()), started.elapsed())
    };

    // Unlimited (loopback has no default budget): the same copy breaks both limits, so
    // the checks below can fail.
    let (free, free_took) = run("free", &[]);
    assert!(
        most_in_flight(&free) > 1 && busiest_second(&free) > RATE + 1,
        "the unlimited run stayed within the budget, so it proves nothing: {} in flight, {} in a second, {} requests",
        most_in_flight(&free),
        busiest_second(&free),
        free.len()
    );

    // The rate from a list, nothing else: each request is quicker than the interval,
    // so only the rate spaces them.
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("limits.toml");
    std::fs::write(
        &list,
        format!(
            "description = \"budgets only\"\n[limits.\"{}\"]\nmax_requests_per_second = {RATE}\n",
            proxy.addr
        ),
    )
    .unwrap();
    let (rated, rated_took) = run("rated", &[list.to_str().unwrap()]);
    // One token of burst: in any second, at most RATE + 1 starts.
    assert!(
        busiest_second(&rated) <= RATE + 1,
        "{} requests in one second; gaps {:?} ms",
        busiest_second(&rated),
        gaps_ms(&rated)
    );
    assert!(
        rated.len() >= 10 && rated_took > free_took,
        "too few requests to show a rate: {}",
        rated.len()
    );

    // Concurrency alone, the flag beating a list that allows 3.
    std::fs::write(
        &list,
        format!(
            "description = \"budgets only\"\n[limits.\"{}\"]\nmax_concurrent = 3\n",
            proxy.addr
        ),
    )
    .unwrap();
    let one = format!("{}=1", proxy.addr);
    let (single, single_took) = run(
        "single",
        &[list.to_str().unwrap(), "--max-concurrent", &one],
    );
    assert_eq!(most_in_flight(&single), 1, "gaps {:?} ms", gaps_ms(&single));
    eprintln!(
        "unlimited: {} requests in {free_took:?}, {} in flight, {} in a second; \
         rate {RATE}/s: {} requests in {rated_took:?}, {} in a second; \
         one at a time: {} requests in {single_took:?}, {} in flight",
        free.len(),
        most_in_flight(&free),
        busiest_second(&free),
        rated.len(),
        busiest_second(&rated),
        single.len(),
        most_in_flight(&single),
    );

    // The retried HEAD waited the second it was asked to, and not a second more.
    let throttled = rated.iter().find(|r| r.status == 429).unwrap().arrived;
    let retried = rated
        .iter()
        .map(|r| r.arrived)
        .filter(|&a| a > throttled)
        .min()
        .unwrap();
    let after = retried - throttled;
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_millis(1500),
        "the request after the 429 came {after:?} later"
    );
}

/// A copy within one registry under one slot: each upload's body is the download of the
/// same host, so an upload that held the slot until its answer would wait forever.
#[test]
fn one_slot_copies_within_one_registry() {
    need!(Docker, Registry, Skopeo);
    let (src, _dst) = source_and_destination(&["fixture/app"]);
    let source = format!("{}/fixture/app:v1", src.addr);
    let one = format!("{}=1", src.addr);
    for prefix in ["once", "twice", "thrice"] {
        let to = format!("{}/{prefix}", src.addr);
        let output = xtask(&[
            "images",
            "mirror",
            "--image",
            &source,
            "--to",
            &to,
            "--max-concurrent",
            &one,
            "--timeout",
            "60s",
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_same_tree(&source, &format!("{to}/fixture/app:v1"));
    }
}
