//! A plain-HTTP proxy in front of a loopback registry that records every request and can
//! inject faults: error statuses, dropped connections mid-body, corrupted bytes, and
//! slow bodies. One request per connection keeps it simple and exact.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The response body was cut short on purpose.
    pub cut: bool,
    /// When the request line came in.
    pub arrived: Instant,
    /// Just before the last byte of the answer's head went out: a client cannot have
    /// the answer before this, so a request arriving later was sent after it.
    pub answered: Option<Instant>,
}

/// What to do with one request.
pub enum Action {
    Forward,
    /// Answer with this status and extra headers, without asking the registry.
    Respond(u16, Vec<(String, String)>),
    /// Answer 200 with this content type and body, without asking the registry.
    Serve(String, Vec<u8>),
    /// Forward, but cut the response body after this many bytes.
    CutAfter(usize),
    /// Forward, but cut the response body after this percentage of its length.
    CutPart(usize),
    /// Forward, flipping one byte of the response body at this offset.
    Corrupt(usize),
    /// Forward the response body slowly: this pause after every 64 KiB.
    Slow(Duration),
    /// Forward after this pause, as a distant registry would answer.
    Delay(Duration),
}

pub type Rule = dyn Fn(&str, &str, usize) -> Action + Send + Sync;

pub struct Proxy {
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to `upstream` (host:port, plain HTTP). `rule(method, path, n)` decides
    /// each request; `n` counts earlier requests with the same method and path.
    pub fn start(upstream: &str, rule: Box<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let rule: Arc<Rule> = Arc::from(rule);
        let (upstream, thread_log, thread_stop) = (upstream.to_string(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if thread_stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (upstream, log, rule) = (upstream.clone(), thread_log.clone(), rule.clone());
                std::thread::spawn(move || {
                    let _ = handle(client, &upstream, &log, &*rule);
                });
            }
        });
        Proxy { addr, log, stop }
    }

    pub fn counting(upstream: &str) -> Proxy {
        Proxy::start(upstream, Box::new(|_, _, _| Action::Forward))
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn handle(
    client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<Logged>>,
    rule: &Rule,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let arrived = Instant::now();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    if method.is_empty() {
        return Ok(());
    }
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        // The client's Host stays, so the registry's Location headers point back here.
        if lower.starts_with("connection:") {
            continue;
        }
        headers.push(line);
    }
    let seen = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.method == method && l.path == path)
        .count();
    let action = rule(&method, &path, seen);
    let mut client_out = client;
    let injected = match &action {
        Action::Respond(status, extra) => Some((*status, extra.clone(), Vec::new())),
        Action::Serve(content_type, body) => Some((
            200,
            vec![("Content-Type".to_string(), content_type.clone())],
            body.clone(),
        )),
        _ => None,
    };
    if let Some((status, extra, body)) = injected {
        // Drain the body so the client sees the answer, not a reset.
        drain_body(&mut reader, content_length, chunked)?;
        let mut response = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        client_out.write_all(response.as_bytes())?;
        if method != "HEAD" {
            client_out.write_all(&body)?;
        }
        log.lock().unwrap().push(Logged {
            method,
            path,
            status,
            cut: false,
            arrived,
            answered: Some(Instant::now()),
        });
        return client_out.shutdown(Shutdown::Both);
    }
    if let Action::Delay(pause) = action {
        std::thread::sleep(pause);
    }
    let mut server = TcpStream::connect(upstream)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in &headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    server.write_all(head.as_bytes())?;
    copy_body(&mut reader, &mut server, content_length, chunked)?;
    let mut server_reader = BufReader::new(server);
    let mut status_line = String::new();
    server_reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut response_head = status_line.clone();
    let mut response_length = 0usize;
    loop {
        let mut line = String::new();
        server_reader.read_line(&mut line)?;
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            response_length = v.trim().parse().unwrap_or(0);
        }
        if line.trim_end().is_empty() {
            response_head.push_str("Connection: close\r\n\r\n");
            break;
        }
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        response_head.push_str(&line);
    }
    // One lock: other connections log too, and `entry` must be this one's.
    let entry = {
        let mut log = log.lock().unwrap();
        log.push(Logged {
            method: method.clone(),
            path,
            status,
            cut: false,
            arrived,
            answered: None,
        });
        log.len() - 1
    };
    let (head, last) = response_head.as_bytes().split_at(response_head.len() - 1);
    client_out.write_all(head)?;
    if let Some(logged) = log.lock().unwrap().get_mut(entry) {
        logged.answered = Some(Instant::now());
    }
    client_out.write_all(last)?;
    if method == "HEAD" {
        return client_out.shutdown(Shutdown::Both);
    }
    let action = match action {
        Action::CutPart(percent) if response_length > 1 => {
            Action::CutAfter((response_length * percent / 100).clamp(1, response_length - 1))
        }
        other => other,
    };
    let mut sent = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = server_reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        let chunk = &mut buffer[..n];
        match action {
            Action::CutAfter(limit) if sent + n > limit => {
                if let Some(logged) = log.lock().unwrap().get_mut(entry) {
                    logged.cut = true;
                }
                client_out.write_all(&chunk[..limit.saturating_sub(sent)])?;
                return client_out.shutdown(Shutdown::Both);
            }
            Action::Corrupt(offset) if offset >= sent && offset < sent + n => {
                chunk[offset - sent] ^= 0xff
            }
            Action::Slow(pause) => std::thread::sleep(pause),
            _ => {}
        }
        client_out.write_all(chunk)?;
        sent += n;
    }
    client_out.shutdown(Shutdown::Both)
}

fn drain_body(
    reader: &mut impl BufRead,
    content_length: usize,
    chunked: bool,
) -> std::io::Result<()> {
    copy_body(reader, &mut std::io::sink(), content_length, chunked)
}

fn copy_body(
    reader: &mut impl BufRead,
    out: &mut impl Write,
    content_length: usize,
    chunked: bool,
) -> std::io::Result<()> {
    if !chunked {
        std::io::copy(&mut reader.take(content_length as u64), out)?;
        return Ok(());
    }
    // Re-frame chunked bodies as they are; the registry reads the same encoding.
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        out.write_all(size_line.as_bytes())?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .unwrap_or(0);
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk)?;
        out.write_all(&chunk)?;
        if size == 0 {
            return Ok(());
        }
    }
}
