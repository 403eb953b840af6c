//! Per-host request budgets, part of the transport: how many requests a host gets per
//! second and how many may wait for their answer at once. One budget per host for the
//! whole run, shared by every client and task, so parallel copies cannot add up past it.
//!
//! A host is keyed as references write it (`docker.io`, `127.0.0.1:5000`); the budget
//! covers every request sent to that host, retries and token requests included, and
//! nothing sent elsewhere (a token service or a blob CDN on another host has its own).

use reqwest::Url;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::{Error, Result};
use super::name::{Registry, DOCKER_HUB};

/// Docker Hub counts anonymous pulls per address (see the README): a mirror run stays
/// gentle there unless told otherwise. Loopback and other hosts have no default.
pub const DOCKER_HUB_DEFAULT: Limit = Limit {
    per_second: Some(5.0),
    concurrent: Some(3),
};
/// Slower than one request in 100 s is a typo, not a budget.
const MIN_RATE: f64 = 0.01;
const MAX_CONCURRENT: usize = 65_536;

/// A host's budget; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limit {
    pub per_second: Option<f64>,
    pub concurrent: Option<usize>,
}

impl Limit {
    /// Each value from `self`, else from `fallback`.
    pub fn or(self, fallback: Limit) -> Limit {
        Limit {
            per_second: self.per_second.or(fallback.per_second),
            concurrent: self.concurrent.or(fallback.concurrent),
        }
    }

    /// The smaller of each value that either sets.
    pub fn stricter(self, other: Limit) -> Limit {
        fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        Limit {
            per_second: min(self.per_second, other.per_second),
            concurrent: min(self.concurrent, other.concurrent),
        }
    }

    /// Why a value is unusable, in the words of `names` (flag or list key names).
    pub fn check(&self, names: [&str; 2]) -> std::result::Result<(), String> {
        if let Some(rate) = self.per_second {
            if !rate.is_finite() || rate < MIN_RATE {
                return Err(format!(
                    "{} must be a number of requests per second of at least {MIN_RATE}, e.g. 2 or 0.5",
                    names[0]
                ));
            }
        }
        if let Some(concurrent) = self.concurrent {
            if !(1..=MAX_CONCURRENT).contains(&concurrent) {
                return Err(format!(
                    "{} must be a whole number from 1 to {MAX_CONCURRENT}, e.g. 3",
                    names[1]
                ));
            }
        }
        Ok(())
    }
}

/// The key of a host: lower case, Docker Hub's API and index hosts folded into
/// `docker.io`, and an explicit `:443` or `:80` dropped (`https://host/` carries no
/// port, and the URL of a default port is written without one).
pub fn host_key(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let host = [":443", ":80"]
        .iter()
        .find_map(|port| host.strip_suffix(port))
        .unwrap_or(&host);
    match host {
        "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// A host as written by a user or a list, checked to be a registry host; its key.
pub fn checked_host(host: &str) -> std::result::Result<String, String> {
    let key = host_key(host);
    Registry::parse(&key).map_err(|e| e.to_string())?;
    Ok(key)
}

/// `host[:port]` of a URL as references write it, for `--insecure` and the budgets.
pub fn authority(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    }
}

/// Every host's budget for the run: the command line's values first, then the lists',
/// then the defaults; and the one limiter per host that enforces it.
#[derive(Default)]
pub struct HostLimits {
    flags: BTreeMap<String, Limit>,
    lists: Mutex<BTreeMap<String, Limit>>,
    limiters: Mutex<HashMap<String, Option<Arc<Limiter>>>>,
}

impl HostLimits {
    /// From `--max-requests-per-second HOST=N` and `--max-concurrent HOST=N` values.
    pub fn from_flags(per_second: &[String], concurrent: &[String]) -> Result<HostLimits> {
        let mut flags = BTreeMap::new();
        let rate = |n: &str| {
            let rate = n.parse::<f64>().ok()?;
            Some(Limit {
                per_second: Some(rate),
                concurrent: None,
            })
        };
        add_flag(
            &mut flags,
            "--max-requests-per-second",
            per_second,
            "a number",
            rate,
        )?;
        let slots = |n: &str| {
            let slots = n.parse::<usize>().ok()?;
            Some(Limit {
                per_second: None,
                concurrent: Some(slots),
            })
        };
        add_flag(
            &mut flags,
            "--max-concurrent",
            concurrent,
            "a whole number",
            slots,
        )?;
        Ok(HostLimits {
            flags,
            ..HostLimits::default()
        })
    }

    /// The lists' budgets, merged already. A host already asked (the destination's
    /// probe, say) gets its limiter again for every later request.
    pub fn set_list_limits(&self, lists: BTreeMap<String, Limit>) {
        let mut limiters = self.limiters.lock().unwrap();
        for key in lists.keys() {
            limiters.remove(key);
        }
        *self.lists.lock().unwrap() = lists;
    }

    /// What applies to the host `key`.
    pub fn effective(&self, key: &str) -> Limit {
        let default = if key == DOCKER_HUB {
            DOCKER_HUB_DEFAULT
        } else {
            Limit::default()
        };
        let listed = self.lists.lock().unwrap().get(key).copied();
        let flagged = self.flags.get(key).copied().unwrap_or_default();
        flagged.or(listed.unwrap_or_default()).or(default)
    }

    /// The limiter of `url`'s host; None when it has no budget.
    pub fn limiter_for(&self, url: &Url) -> Option<Arc<Limiter>> {
        let key = host_key(&authority(url));
        let mut limiters = self.limiters.lock().unwrap();
        limiters
            .entry(key)
            .or_insert_with_key(|key| {
                let limit = self.effective(key);
                (limit != Limit::default()).then(|| Arc::new(Limiter::new(limit)))
            })
            .clone()
    }
}

/// Each `HOST=N` of `flag` into `flags`: the host checked, the number read by `parse`
/// and checked; a host given twice is refused.
fn add_flag(
    flags: &mut BTreeMap<String, Limit>,
    flag: &str,
    values: &[String],
    kind: &str,
    parse: impl Fn(&str) -> Option<Limit>,
) -> Result<()> {
    for value in values {
        let bad = |why: &str| {
            Error::Invalid(format!("{flag} '{}': {why}", crate::text::printable(value)))
        };
        let (host, number) = value
            .split_once('=')
            .ok_or_else(|| bad(&format!("write HOST=N, e.g. {flag} docker.io=2")))?;
        let key = checked_host(host).map_err(|e| bad(&e))?;
        let limit = parse(number.trim())
            .ok_or_else(|| bad(&format!("'{}' is not {kind}", number.trim())))?;
        limit.check(["N", "N"]).map_err(|e| bad(&e))?;
        let entry = flags.entry(key).or_default();
        let twice = (limit.per_second.is_some() && entry.per_second.is_some())
            || (limit.concurrent.is_some() && entry.concurrent.is_some());
        if twice {
            return Err(bad("the host is given twice; give each host once"));
        }
        *entry = limit.or(*entry);
    }
    Ok(())
}

/// One host's budget in force: a semaphore for the requests awaiting an answer, and an
/// interval between request starts (a token bucket of one token: no burst beyond the
/// first request, so any window of T seconds sees at most T×rate + 1 starts).
pub struct Limiter {
    interval: Option<Duration>,
    /// When the next request may start.
    next_start: Mutex<Instant>,
    slots: Option<Arc<Semaphore>>,
}

impl Limiter {
    pub fn new(limit: Limit) -> Limiter {
        Limiter {
            interval: limit
                .per_second
                .and_then(|rate| Duration::try_from_secs_f64(1.0 / rate).ok()),
            next_start: Mutex::new(Instant::now()),
            slots: limit.concurrent.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// Waits for a free slot, then for this request's start time; the permit is the
    /// slot, to hold until the answer came. The slot comes first: a start time reserved
    /// while waiting for a slot could pass unused, and requests would then bunch up.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = match &self.slots {
            // The semaphore is never closed; if it were, the rate still holds.
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let start = {
            let mut next = self.next_start.lock().unwrap();
            let start = (*next).max(Instant::now());
            // Without a rate, only a Retry-After moves the next start.
            if let Some(interval) = self.interval {
                *next = start + interval;
            }
            start
        };
        tokio::time::sleep_until(start).await;
        permit
    }

    /// A 429 with Retry-After holds back every request to the host, not only the one
    /// retried. The retried one sleeps as long in `with_retry` and then finds the start
    /// time already passed, so the wait is not paid twice.
    pub fn hold_off(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut next = self.next_start.lock().unwrap();
        if *next < until {
            *next = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Many tasks at once against one limiter: the start times, and the most in flight.
    async fn starts_of(
        limiter: Arc<Limiter>,
        tasks: usize,
        busy: Duration,
    ) -> (Vec<Duration>, usize) {
        let begin = Instant::now();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (limiter, in_flight, most) = (limiter.clone(), in_flight.clone(), most.clone());
                tokio::spawn(async move {
                    let _permit = limiter.admit().await;
                    let started = Instant::now() - begin;
                    let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(busy).await;
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    started
                })
            })
            .collect();
        let mut starts = Vec::new();
        for handle in handles {
            starts.push(handle.await.unwrap());
        }
        starts.sort();
        (starts, most.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[test]
    fn starts_are_spaced_by_the_rate_and_slots_bound_what_is_in_flight() {
        let limiter = Arc::new(Limiter::new(Limit {
            per_second: Some(4.0),
            concurrent: Some(2),
        }));
        let (starts, most) = paused(starts_of(limiter, 10, Duration::from_secs(1)));
        assert_eq!(most, 2);
        // Two slots, each busy 1 s: the rate (every 250 ms) is not what holds them back.
        let ms: Vec<u128> = starts.iter().map(|s| s.as_millis()).collect();
        assert_eq!(ms, [0, 250, 1000, 1250, 2000, 2250, 3000, 3250, 4000, 4250]);

        let limiter = Arc::new(Limiter::new(Limit {
            per_second: Some(0.5),
            concurrent: None,
        }));
        let (starts, most) = paused(starts_of(limiter, 4, Duration::from_millis(10)));
        assert_eq!(most, 1, "two seconds apart, so never two at once");
        let secs: Vec<u64> = starts.iter().map(|s| s.as_secs()).collect();
        assert_eq!(secs, [0, 2, 4, 6]);
    }

    #[test]
    fn a_retry_after_holds_the_host_back_once() {
        paused(async {
            let limiter = Limiter::new(Limit {
                per_second: Some(10.0),
                concurrent: None,
            });
            let begin = Instant::now();
            limiter.admit().await;
            limiter.hold_off(Duration::from_secs(3));
            // The retried request slept the same 3 s in with_retry: no second wait.
            tokio::time::sleep(Duration::from_secs(3)).await;
            limiter.admit().await;
            assert_eq!((Instant::now() - begin).as_millis(), 3000);
            limiter.admit().await;
            assert_eq!((Instant::now() - begin).as_millis(), 3100);

            // A host with only a concurrency budget is held back too.
            let slots_only = Limiter::new(Limit {
                per_second: None,
                concurrent: Some(2),
            });
            slots_only.hold_off(Duration::from_secs(2));
            let before = Instant::now();
            slots_only.admit().await;
            slots_only.admit().await;
            assert_eq!((Instant::now() - before).as_millis(), 2000);
        });
    }

    #[test]
    fn flags_are_checked_and_hosts_normalised() {
        let limits = HostLimits::from_flags(
            &["registry-1.docker.io=1.5".into(), "127.0.0.1:5000=9".into()],
            &["Docker.io=2".into()],
        )
        .unwrap();
        assert_eq!(
            limits.effective("docker.io"),
            Limit {
                per_second: Some(1.5),
                concurrent: Some(2)
            }
        );
        assert_eq!(limits.effective("ghcr.io"), Limit::default());
        assert_eq!(host_key("GHCR.io:443"), "ghcr.io");
        assert_eq!(host_key("[::1]:80"), "[::1]");
        assert_eq!(host_key("127.0.0.1:8080"), "127.0.0.1:8080");
        let url = Url::parse("https://index.docker.io/v2/").unwrap();
        assert!(limits.limiter_for(&url).is_some());
        let loopback = Url::parse("http://127.0.0.1:5001/v2/").unwrap();
        assert!(
            limits.limiter_for(&loopback).is_none(),
            "loopback has no default"
        );
        for (rate, concurrent, error) in [
            ("docker.io", "", "write HOST=N"),
            ("docker.io=abc", "", "'abc' is not a number"),
            ("docker.io=0", "", "at least 0.01"),
            ("docker.io=NaN", "", "at least 0.01"),
            ("", "docker.io=0", "from 1 to"),
            ("", "docker.io=-1", "'-1' is not a whole number"),
            ("", "bad host!=1", "registry host"),
            ("docker.io=1", "", ""),
        ] {
            let list = |v: &str| {
                if v.is_empty() {
                    vec![]
                } else {
                    vec![v.to_string()]
                }
            };
            let mut rates = list(rate);
            if error.is_empty() {
                rates.push("index.docker.io=2".into());
            }
            let result = HostLimits::from_flags(&rates, &list(concurrent));
            let message = result.err().map(|e| e.to_string()).unwrap_or_default();
            let expected = if error.is_empty() {
                "given twice"
            } else {
                error
            };
            assert!(message.contains(expected), "{rate} {concurrent}: {message}");
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn a_host_asked_before_the_lists_were_read_gets_their_budget() {
        let limits = HostLimits::from_flags(&[], &[]).unwrap();
        let url = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert!(limits.limiter_for(&url).is_none());
        limits.set_list_limits(BTreeMap::from([(
            "127.0.0.1:5000".to_string(),
            Limit {
                per_second: None,
                concurrent: Some(2),
            },
        )]));
        assert!(limits.limiter_for(&url).is_some());
    }

    #[test]
    fn command_line_beats_lists_and_lists_beat_the_default() {
        let limits = HostLimits::from_flags(&[], &["docker.io=1".into()]).unwrap();
        assert_eq!(
            limits.effective("docker.io"),
            Limit {
                concurrent: Some(1),
                ..DOCKER_HUB_DEFAULT
            }
        );
        limits.set_list_limits(BTreeMap::from([(
            "docker.io".to_string(),
            Limit {
                per_second: Some(0.5),
                concurrent: Some(2),
            },
        )]));
        assert_eq!(
            limits.effective("docker.io"),
            Limit {
                per_second: Some(0.5),
                concurrent: Some(1)
            }
        );
        let a = Limit {
            per_second: Some(2.0),
            concurrent: None,
        };
        let b = Limit {
            per_second: Some(1.0),
            concurrent: Some(4),
        };
        assert_eq!(
            a.stricter(b),
            Limit {
                per_second: Some(1.0),
                concurrent: Some(4)
            }
        );
    }
}
