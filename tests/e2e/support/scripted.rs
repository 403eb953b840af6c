//! A scripted HTTP server for hostile-registry tests: a handler decides every answer,
//! every request is recorded with its headers, and bodies can be huge or dripped one
//! byte at a time. One request per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    /// This many bytes of JSON-ish filler, with no Content-Length.
    Endless(u64),
    /// The bytes, one per interval.
    Drip(Vec<u8>, Duration),
    /// A Content-Length for all the bytes, then only the first `n` and a closed connection.
    Cut(Vec<u8>, usize),
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }

    /// 200 with `bytes` as a manifest or blob: type and digest headers set.
    pub fn content(media_type: &str, bytes: &[u8]) -> Reply {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        Reply::new(200)
            .header("content-type", media_type)
            .header("docker-content-digest", &digest)
            .body(Body::Bytes(bytes.to_vec()))
    }
}

pub type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Scripted {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes written to clients, all requests together.
    pub written: Arc<AtomicU64>,
}

impl Scripted {
    /// Listens on `ip` (any free port).
    pub fn start(ip: &str, handler: Box<Handler>) -> Scripted {
        let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let written = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::from(handler);
        let (thread_seen, thread_written) = (seen.clone(), written.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, written, handler) =
                    (thread_seen.clone(), thread_written.clone(), handler.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &seen, &written, &*handler);
                });
            }
        });
        Scripted {
            addr,
            seen,
            written,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    stream: std::net::TcpStream,
    seen: &Mutex<Vec<Seen>>,
    written: &AtomicU64,
    handler: &Handler,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let request = Seen {
        method,
        path,
        headers,
    };
    if let Some(length) = request
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
    }
    seen.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} Scripted\r\nconnection: close\r\n",
        reply.status
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &reply.body {
        Body::Bytes(bytes) | Body::Drip(bytes, _) | Body::Cut(bytes, _) => {
            head.push_str(&format!("content-length: {}\r\n", bytes.len()))
        }
        Body::Endless(_) => {}
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if request.method == "HEAD" {
        return Ok(());
    }
    match reply.body {
        Body::Bytes(bytes) => {
            out.write_all(&bytes)?;
            written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Body::Cut(bytes, n) => {
            out.write_all(&bytes[..n.min(bytes.len())])?;
            written.fetch_add(n as u64, Ordering::Relaxed);
        }
        Body::Drip(bytes, pause) => {
            for byte in bytes {
                out.write_all(&[byte])?;
                written.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
        }
        Body::Endless(total) => {
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < total {
                out.write_all(&chunk)?;
                sent += chunk.len() as u64;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
