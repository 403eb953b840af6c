//! An artifact mirror for build containers: static files laid out as `<host>/<path>`,
//! served over plain HTTP on the Docker bridge's gateway address (build containers cannot
//! reach the host's loopback), counting what it serves.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct ArtifactServer {
    pub url: String,
    pub served: Arc<AtomicUsize>,
}

/// The host's address on Docker's default bridge, as build containers see it.
pub fn bridge_gateway() -> String {
    super::run(
        "docker",
        &[
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ],
    )
    .trim()
    .to_string()
}

impl ArtifactServer {
    pub fn start(root: &Path) -> ArtifactServer {
        let listener = TcpListener::bind(format!("{}:0", bridge_gateway())).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let root: PathBuf = root.to_path_buf();
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let count = count.clone();
                std::thread::spawn(move || serve(stream, &root, &count));
            }
        });
        ArtifactServer { url, served }
    }
}

fn serve(mut stream: std::net::TcpStream, root: &Path, served: &AtomicUsize) {
    let mut request = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let safe = !path.split('/').any(|p| p == "..");
    let file = root.join(path.trim_start_matches('/'));
    match std::fs::read(&file) {
        Ok(body) if safe && file.is_file() => {
            served.fetch_add(1, Ordering::Relaxed);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    }
}
