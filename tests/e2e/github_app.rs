//! GitHub App authentication in the devbox (agents/devbox/github-app/), run from the
//! repository on this machine: the same scripts the image installs, with the real gh and
//! git, against a fake GitHub API on loopback. The fake serves TLS (gh talks https to an
//! enterprise host), checks each JWT with the app's public key as GitHub does (RS256,
//! iss, iat, exp at most ten minutes after iat, not expired), mints installation tokens,
//! answers `gh api` calls that carry one, and serves a git repository through
//! `git http-backend` to clients that send one as Basic auth.

use crate::support::*;
use base64::Engine as _;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const APP_ID: &str = "424242";
const INSTALLATION_ID: &str = "7007";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// RFC 3339 in UTC, as GitHub writes expires_at.
fn rfc3339(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[derive(Default)]
struct State {
    /// Seconds from now that the next minted token lives.
    lifetime: i64,
    /// Every token minted, in order.
    tokens: Vec<String>,
    /// Every JWT presented, accepted or not.
    jwts: Vec<String>,
    /// Why each refused JWT was refused.
    refused: Vec<String>,
    /// `gh api` paths answered with a valid token.
    api_calls: Vec<String>,
    /// Git requests: (path, whether they carried a valid token).
    git: Vec<(String, bool)>,
}

struct FakeGitHub {
    addr: String,
    cert: PathBuf,
    state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json(status: u16, value: serde_json::Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: value.to_string().into_bytes(),
    }
}

impl FakeGitHub {
    /// Serves with `public_key` (PKCS#1 DER) as the app's key and `repos` as git's root.
    fn start(public_key: Vec<u8>, repos: PathBuf) -> FakeGitHub {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        self_signed_cert(&cert, &key, "127.0.0.1");
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, PrivateKeyDer::from_pem_file(&key).unwrap())
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            lifetime: 3600,
            ..State::default()
        }));
        let (thread_state, public_key) = (state.clone(), Arc::new(public_key));
        let repos = Arc::new(repos);
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, state, public_key, repos) = (
                    config.clone(),
                    thread_state.clone(),
                    public_key.clone(),
                    repos.clone(),
                );
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)));
                    let connection = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(connection, tcp);
                    let Some(request) = read_request(&mut tls) else {
                        return;
                    };
                    let response = handle(&request, &state, &public_key, &repos);
                    let mut head = format!("HTTP/1.1 {} X\r\n", response.status);
                    for (name, value) in &response.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str(&format!(
                        "Content-Length: {}\r\nConnection: close\r\n\r\n",
                        response.body.len()
                    ));
                    let _ = tls.write_all(head.as_bytes());
                    let _ = tls.write_all(&response.body);
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        FakeGitHub {
            addr,
            cert,
            state,
            _dir: dir,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(length) = headers.get("content-length") {
        body.resize(length.parse().ok()?, 0);
        reader.read_exact(&mut body).ok()?;
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// The JWT's claims when GitHub would accept it, else why not.
fn check_jwt(jwt: &str, public_key: &[u8]) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not three parts".into());
    };
    let decode = |part: &str| -> Result<serde_json::Value, String> {
        let bytes = b64.decode(part).map_err(|e| format!("base64: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))
    };
    let (header, claims) = (decode(header)?, decode(claims)?);
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let signature = b64
        .decode(signature)
        .map_err(|e| format!("signature: {e}"))?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
    .map_err(|_| "wrong signature".to_string())?;
    // GitHub takes the app ID as a string or a number, or the client ID.
    let iss = claims["iss"]
        .as_str()
        .map(str::to_string)
        .or_else(|| claims["iss"].as_i64().map(|n| n.to_string()));
    if iss.as_deref() != Some(APP_ID) {
        return Err(format!("iss {}", claims["iss"]));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(format!("iat/exp missing: {claims}"));
    };
    if exp - iat > 600 {
        return Err(format!("exp - iat = {} > 600", exp - iat));
    }
    if exp <= now() || iat > now() + 60 {
        return Err(format!(
            "not valid now: iat {iat}, exp {exp}, now {}",
            now()
        ));
    }
    Ok(())
}

fn handle(request: &Request, state: &Mutex<State>, public_key: &[u8], repos: &Path) -> Response {
    let authorization = request
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let valid_token = |token: &str| state.lock().unwrap().tokens.iter().any(|t| t == token);
    if let Some(rest) = path.strip_prefix("/api/v3/app/installations/") {
        let Some(jwt) = authorization.strip_prefix("Bearer ") else {
            return json(401, serde_json::json!({"message": "no JWT"}));
        };
        let mut state = state.lock().unwrap();
        state.jwts.push(jwt.to_string());
        if let Err(why) = check_jwt(jwt, public_key) {
            state.refused.push(why);
            return json(
                401,
                serde_json::json!({"message": "A JSON web token could not be decoded"}),
            );
        }
        if request.method != "POST" || rest != format!("{INSTALLATION_ID}/access_tokens") {
            return json(404, serde_json::json!({"message": "Not Found"}));
        }
        let token = format!(
            "ghs_{}",
            (0..36)
                .map(|_| fastrand::alphanumeric())
                .collect::<String>()
        );
        state.tokens.push(token.clone());
        let expires_at = rfc3339(now() + state.lifetime);
        return json(
            201,
            serde_json::json!({"token": token, "expires_at": expires_at}),
        );
    }
    if let Some(api_path) = path.strip_prefix("/api/v3") {
        let token = authorization
            .strip_prefix("token ")
            .or_else(|| authorization.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !valid_token(token) {
            return json(401, serde_json::json!({"message": "Bad credentials"}));
        }
        state.lock().unwrap().api_calls.push(api_path.to_string());
        return json(200, serde_json::json!({"answered": api_path}));
    }
    // Git smart HTTP: a token as Basic auth, as GitHub takes it.
    let basic = authorization
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| text(&b))
        .unwrap_or_default();
    let ok = basic
        .strip_prefix("x-access-token:")
        .is_some_and(valid_token);
    state.lock().unwrap().git.push((path.to_string(), ok));
    if !ok {
        return Response {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                "Basic realm=\"fake GitHub\"".into(),
            )],
            body: b"Unauthorized\n".to_vec(),
        };
    }
    http_backend(request, path, query, repos)
}

/// `git http-backend` as CGI.
fn http_backend(request: &Request, path: &str, query: &str, repos: &Path) -> Response {
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", repos)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", &request.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", request.body.len().to_string());
    for (header, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = request.headers.get(header) {
            command.env(variable, value);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&request.body)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            let i = output.stdout.windows(2).position(|w| w == b"\n\n")?;
            Some((i, 2))
        })
        .expect("git http-backend wrote no headers");
    let (mut status, mut headers) = (200, Vec::new());
    for line in text(&output.stdout[..split.0]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            status = value.trim()[..3].parse().unwrap();
        } else {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Response {
        status,
        headers,
        body: output.stdout[split.0 + split.1..].to_vec(),
    }
}

/// One app (its key pair and credentials folder), a fake GitHub that knows its public
/// key, and a bare repository behind it.
struct World {
    github: FakeGitHub,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        run("openssl", &["genrsa", "-out", &p("app.pem"), "2048"]);
        run(
            "openssl",
            &[
                "rsa",
                "-in",
                &p("app.pem"),
                "-RSAPublicKey_out",
                "-outform",
                "DER",
                "-out",
                &p("app.pub.der"),
            ],
        );
        let credentials = dir.path().join("github-app");
        fs::create_dir(&credentials).unwrap();
        // As a Kubernetes secret mounts them: one file per key, a trailing newline.
        fs::write(credentials.join("app_id"), format!("{APP_ID}\n")).unwrap();
        fs::write(
            credentials.join("installation_id"),
            format!("{INSTALLATION_ID}\n"),
        )
        .unwrap();
        fs::copy(dir.path().join("app.pem"), credentials.join("private_key")).unwrap();
        // A repository with one commit, served bare.
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        fs::write(work.join("README"), "cloned with an installation token\n").unwrap();
        commit_all(&work);
        let repos = dir.path().join("repos");
        fs::create_dir(&repos).unwrap();
        run(
            "git",
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                repos.join("repo.git").to_str().unwrap(),
            ],
        );
        for sub in ["runtime", "home", "gh-config"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::set_permissions(
            dir.path().join("runtime"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let public_key = fs::read(dir.path().join("app.pub.der")).unwrap();
        let github = FakeGitHub::start(public_key, repos);
        // Scoped to the app's host, as /etc/gitconfig scopes it to github.com.
        fs::write(
            dir.path().join("gitconfig"),
            format!(
                "[credential \"https://{}\"]\n\thelper = github-app\n",
                github.addr
            ),
        )
        .unwrap();
        World { github, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn credentials(&self) -> PathBuf {
        self.path("github-app")
    }

    /// A command with the scripts from the repository first on PATH, the app's host as
    /// GH_HOST (an enterprise host: the API at https://HOST/api/v3), the fake's CA
    /// trusted, and nothing from this machine's own git, gh or token settings.
    fn command(&self, program: &str) -> Command {
        let scripts = project_root().join("agents/devbox/github-app");
        let mut command = Command::new(program);
        for variable in [
            "GH_TOKEN",
            "GITHUB_TOKEN",
            "GH_ENTERPRISE_TOKEN",
            "GITHUB_ENTERPRISE_TOKEN",
            "GH_APP_ID",
            "GH_APP_INSTALLATION_ID",
            "GH_APP_PRIVATE_KEY",
            "GH_APP_API_URL",
            "GH_APP_REAL_GH",
        ] {
            command.env_remove(variable);
        }
        let cert = self.github.cert.to_str().unwrap();
        command
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    scripts.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("GH_APP_CREDENTIALS_DIR", self.credentials())
            .env("GH_HOST", &self.github.addr)
            .env("XDG_RUNTIME_DIR", self.path("runtime"))
            .env("HOME", self.path("home"))
            .env("GH_CONFIG_DIR", self.path("gh-config"))
            .env("GH_NO_UPDATE_NOTIFIER", "1")
            .env("GH_PROMPT_DISABLED", "1")
            .env("CURL_CA_BUNDLE", cert)
            .env("SSL_CERT_FILE", cert)
            .env("GIT_SSL_CAINFO", cert)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.path("gitconfig"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }

    fn clone_url(&self) -> String {
        format!("https://{}/repo.git", self.github.addr)
    }

    /// The one token cache file, asserted private.
    fn cache_file(&self) -> PathBuf {
        let files: Vec<PathBuf> = fs::read_dir(self.path("runtime"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .collect();
        assert_eq!(files.len(), 1, "one cache file and no leftovers: {files:?}");
        let mode = fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", files[0].display());
        files[0].clone()
    }

    fn tokens(&self) -> Vec<String> {
        self.github.state().tokens.clone()
    }
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn assert_no_secret(world: &World, what: &str, haystack: &str) {
    for token in world.tokens() {
        assert!(!haystack.contains(&token), "{what} holds a token");
    }
    for jwt in world.github.state().jwts.clone() {
        assert!(!haystack.contains(&jwt), "{what} holds a JWT");
    }
    let key = fs::read_to_string(world.path("app.pem")).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!haystack.contains(line), "{what} holds key material");
    }
}

#[test]
fn git_clone_and_gh_api_use_one_cached_installation_token() {
    need!(Gh);
    let world = World::new();
    let clone = world.run("git", &["clone", "-q", &world.clone_url(), "clone"]);
    ok(&clone, "git clone");
    assert_eq!(
        fs::read_to_string(world.path("clone/README")).unwrap(),
        "cloned with an installation token\n"
    );
    let git = world.github.state().git.clone();
    assert!(git.iter().any(|(_, ok)| *ok), "{git:?}");
    assert_eq!(world.tokens().len(), 1);

    let api = world.run("gh", &["api", "/repos/acme/widgets"]);
    let body: serde_json::Value = serde_json::from_str(&ok(&api, "gh api")).unwrap();
    assert_eq!(body["answered"], "/repos/acme/widgets");
    assert_eq!(
        world.github.state().api_calls,
        ["/repos/acme/widgets".to_string()]
    );
    // The cached token served gh too: one mint in all.
    assert_eq!(
        world.tokens().len(),
        1,
        "refused: {:?}",
        world.github.state().refused
    );
    let cache = fs::read_to_string(world.cache_file()).unwrap();
    assert!(cache.contains(&world.tokens()[0]));
    for output in [&clone, &api] {
        assert_no_secret(
            &world,
            "output",
            &(text(&output.stdout) + &text(&output.stderr)),
        );
    }
}

#[test]
fn a_token_near_its_expiry_is_minted_again() {
    let world = World::new();
    let token = || {
        let out = world.run("github-app-token", &["token"]);
        ok(&out, "github-app-token token").trim().to_string()
    };
    // Five minutes left: inside the ten-minute margin, so the next call mints again.
    world.github.state().lifetime = 300;
    let first = token();
    assert_eq!(world.tokens(), std::slice::from_ref(&first));
    let second = token();
    assert_ne!(first, second);
    assert_eq!(world.tokens().len(), 2);
    world.cache_file();
    // An hour: cached.
    world.github.state().lifetime = 3600;
    let third = token();
    assert_eq!(token(), third);
    assert_eq!(token(), third);
    assert_eq!(world.tokens().len(), 3);
    assert!(fs::read_to_string(world.cache_file())
        .unwrap()
        .contains(&third));
    // Not onto a terminal, though: `script` gives it one.
    let on_a_tty = world.run("script", &["-qec", "github-app-token token", "/dev/null"]);
    assert!(!on_a_tty.status.success());
    let said = text(&on_a_tty.stdout);
    assert!(!said.contains(&third), "the token reached a terminal");
    assert!(
        said.contains("github-app: refusing to print the token to a terminal"),
        "{said}"
    );
    // A token the server refuses is dropped when git erases it.
    let erase = world
        .command("git-credential-github-app")
        .arg("erase")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let host = &world.github.addr;
            child.stdin.take().unwrap().write_all(
                format!(
                    "protocol=https\nhost={host}\nusername=x-access-token\npassword={third}\n\n"
                )
                .as_bytes(),
            )?;
            child.wait_with_output()
        })
        .unwrap();
    ok(&erase, "erase");
    assert_ne!(token(), third);
    assert_eq!(world.tokens().len(), 4);
}

#[test]
fn a_wrong_key_is_refused_with_one_clear_line() {
    need!(Gh);
    let world = World::new();
    let other = world.path("other.pem");
    run(
        "openssl",
        &["genrsa", "-out", other.to_str().unwrap(), "2048"],
    );
    fs::copy(&other, world.credentials().join("private_key")).unwrap();
    let api = world.run("gh", &["api", "/repos/acme/widgets"]);
    assert!(!api.status.success());
    assert_eq!(text(&api.stdout), "");
    assert_eq!(
        text(&api.stderr),
        format!(
            "github-app: the API refused the app's JWT (401): check private_key matches app id {APP_ID} \
             (A JSON web token could not be decoded)\n"
        )
    );
    assert_eq!(
        world.github.state().refused,
        ["wrong signature".to_string()]
    );
    assert!(world.github.state().api_calls.is_empty());
    // git fails too, naming the same cause.
    let clone = world.run("git", &["clone", "-q", &world.clone_url(), "clone"]);
    assert!(!clone.status.success());
    assert!(
        text(&clone.stderr).contains("github-app: the API refused the app's JWT (401)"),
        "{}",
        text(&clone.stderr)
    );
    assert!(world.tokens().is_empty());

    // A missing piece is named too.
    fs::remove_file(world.credentials().join("installation_id")).unwrap();
    let api = world.run("gh", &["api", "/x"]);
    assert!(!api.status.success());
    let stderr = text(&api.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("github-app: no installation id: set GH_APP_INSTALLATION_ID or write "),
        "{stderr}"
    );
}

#[test]
fn with_no_credentials_gh_and_git_behave_as_before() {
    need!(Gh);
    let world = World::new();
    fs::remove_dir_all(world.credentials()).unwrap();
    let real_gh = String::from_utf8(run("sh", &["-c", "command -v gh"]).into_bytes()).unwrap();
    let real_gh = real_gh.trim();
    assert!(!real_gh.contains("github-app"), "{real_gh}");
    // The wrapper is the real gh: the same output, status and errors.
    for args in [&["--version"][..], &["api", "/repos/acme/widgets"][..]] {
        let wrapped = world.run("gh", args);
        let plain = world.run(real_gh, args);
        assert_eq!(wrapped.status.code(), plain.status.code(), "gh {args:?}");
        assert_eq!(text(&wrapped.stdout), text(&plain.stdout), "gh {args:?}");
        assert_eq!(text(&wrapped.stderr), text(&plain.stderr), "gh {args:?}");
    }
    // The helper says nothing, so git goes on as without it.
    let helper = world
        .command("sh")
        .args([
            "-c",
            "printf 'protocol=https\\nhost=%s\\n\\n' \"$GH_HOST\" | git credential-github-app get",
        ])
        .output()
        .unwrap();
    assert!(helper.status.success());
    assert_eq!(text(&helper.stdout), "");
    assert_eq!(text(&helper.stderr), "");
    let clone = world.run("git", &["clone", "-q", &world.clone_url(), "clone"]);
    assert!(!clone.status.success());
    let without_helper = world
        .command("git")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["clone", "-q", &world.clone_url(), "clone2"])
        .output()
        .unwrap();
    assert_eq!(
        text(&clone.stderr).replace("clone2", "clone"),
        text(&without_helper.stderr).replace("clone2", "clone")
    );
    assert!(world.github.state().jwts.is_empty());

    // A user's own token is left alone, with credentials mounted or not.
    let world = World::new();
    let api = world
        .command("gh")
        .env("GH_ENTERPRISE_TOKEN", "the-users-own")
        .args(["api", "/x"])
        .output()
        .unwrap();
    assert!(!api.status.success());
    let said = text(&api.stdout) + &text(&api.stderr);
    assert!(said.contains("Bad credentials"), "{said}");
    assert!(world.tokens().is_empty());
}

#[test]
fn no_secret_reaches_a_command_line() {
    need!(Gh, Strace);
    let world = World::new();
    // The key from the environment this time, not the mounted file.
    fs::remove_dir_all(world.credentials()).unwrap();
    let key = fs::read_to_string(world.path("app.pem")).unwrap();
    let trace = world.path("execve.trace");
    let script = format!(
        "git clone -q '{url}' clone && gh api /repos/acme/widgets >/dev/null && github-app-token forget && github-app-token token >/dev/null",
        url = world.clone_url()
    );
    let out = world
        .command("strace")
        .args(["-f", "-e", "trace=execve", "-s", "65536", "-o"])
        .arg(&trace)
        .args(["sh", "-c", &script])
        .env("GH_APP_ID", APP_ID)
        .env("GH_APP_INSTALLATION_ID", INSTALLATION_ID)
        .env("GH_APP_PRIVATE_KEY", &key)
        .output()
        .unwrap();
    ok(&out, "traced run");
    assert_eq!(
        world.tokens().len(),
        2,
        "refused: {:?}",
        world.github.state().refused
    );
    let trace = fs::read_to_string(&trace).unwrap();
    // It traced what ran: openssl signed, curl minted, the real gh ran.
    for program in ["openssl", "curl", "git-credential-github-app", "dgst"] {
        assert!(trace.contains(program), "{program} not in the trace");
    }
    assert_no_secret(&world, "an execve", &trace);
    assert_no_secret(&world, "output", &(text(&out.stdout) + &text(&out.stderr)));
    // The key from the environment went to a temp file that is gone.
    world.cache_file();
}

/// The fake refuses what GitHub refuses, so the tests above prove the JWT is right.
#[test]
fn the_fake_refuses_the_jwts_github_refuses() {
    let world = World::new();
    let public_key = fs::read(world.path("app.pub.der")).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sign = |header: &str, claims: &str, key: &Path| {
        let unsigned = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let data = world.path("unsigned");
        fs::write(&data, &unsigned).unwrap();
        let signature = Command::new("openssl")
            .args(["dgst", "-sha256", "-binary", "-sign"])
            .arg(key)
            .arg(&data)
            .output()
            .unwrap();
        assert!(signature.status.success());
        format!("{unsigned}.{}", b64.encode(&signature.stdout))
    };
    let key = world.path("app.pem");
    let rs256 = r#"{"alg":"RS256","typ":"JWT"}"#;
    let claims =
        |iat: i64, exp: i64, iss: &str| format!(r#"{{"iat":{iat},"exp":{exp},"iss":{iss}}}"#);
    let t = now();
    let good = claims(t - 60, t + 540, &format!("\"{APP_ID}\""));
    assert_eq!(check_jwt(&sign(rs256, &good, &key), &public_key), Ok(()));
    assert_eq!(
        check_jwt(
            &sign(rs256, &claims(t - 60, t + 540, APP_ID), &key),
            &public_key
        ),
        Ok(()),
        "iss as a number"
    );
    let other = world.path("other.pem");
    run(
        "openssl",
        &["genrsa", "-out", other.to_str().unwrap(), "2048"],
    );
    for (jwt, why) in [
        (sign(rs256, &good, &other), "wrong signature"),
        (
            sign(r#"{"alg":"HS256","typ":"JWT"}"#, &good, &key),
            "alg \"HS256\"",
        ),
        (
            sign(
                rs256,
                &claims(t - 60, t + 541, &format!("\"{APP_ID}\"")),
                &key,
            ),
            "exp - iat = 601 > 600",
        ),
        (
            sign(
                rs256,
                &claims(t - 700, t - 100, &format!("\"{APP_ID}\"")),
                &key,
            ),
            "not valid now",
        ),
        (
            sign(rs256, &claims(t - 60, t + 540, "\"1\""), &key),
            "iss \"1\"",
        ),
    ] {
        let refused = check_jwt(&jwt, &public_key).unwrap_err();
        assert!(refused.starts_with(why), "{refused} is not {why}");
    }
}

/// Without XDG_RUNTIME_DIR the cache is in /tmp/github-app-UID, 0700, its file 0600.
#[test]
fn without_a_runtime_dir_the_cache_is_private_under_tmp() {
    let world = World::new();
    let out = world
        .command("github-app-token")
        .arg("token")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let token = ok(&out, "github-app-token token");
    let uid = run("id", &["-u"]);
    let dir = PathBuf::from(format!("/tmp/github-app-{}", uid.trim()));
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let cached: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| fs::read_to_string(p).is_ok_and(|c| c.contains(token.trim())))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(
        fs::metadata(&cached[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Only this test's files go: other runs share the folder.
    let _ = fs::remove_file(format!("{}.lock", cached[0].display()));
    fs::remove_file(&cached[0]).unwrap();
}

#[test]
fn a_ghe_com_host_gets_its_own_api_and_the_token_variable_gh_reads_for_it() {
    need!(Gh);
    let world = World::new();
    // HOST.ghe.com serves its API at api.HOST, not HOST/api/v3 (it does not resolve here).
    let token = world
        .command("github-app-token")
        .env("GH_HOST", "acme.ghe.com")
        .arg("token")
        .output()
        .unwrap();
    let stderr = text(&token.stderr);
    assert!(!token.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "github-app: cannot reach the GitHub API at https://api.acme.ghe.com/app/installations/"
        ),
        "{stderr}"
    );
    // gh reads GH_TOKEN for a ghe.com host and GH_ENTERPRISE_TOKEN only for Enterprise
    // Server (go-gh auth.IsEnterprise). A stand-in for the real gh, named as one, says
    // which variable the wrapper gave it.
    let probe = world.path("gh-token-variable-probe");
    fs::write(
        &probe,
        "#!/bin/sh\nenv | sed -n 's/^\\(GH_TOKEN\\|GH_ENTERPRISE_TOKEN\\)=.*/\\1/p'\n",
    )
    .unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).unwrap();
    let api = format!("https://{}/api/v3", world.github.addr);
    let given = |host: &str| {
        let out = world
            .command("gh")
            .env("GH_HOST", host)
            .env("GH_APP_API_URL", &api)
            .env("GH_APP_REAL_GH", &probe)
            .args(["api", "/repos/acme/widgets"])
            .output()
            .unwrap();
        ok(&out, &format!("gh for {host}"))
    };
    assert_eq!(given("acme.ghe.com"), "GH_TOKEN\n");
    assert_eq!(given("ghes.example"), "GH_ENTERPRISE_TOKEN\n");
    // The cache is per API, app and installation: the same API gave one token to both.
    assert_eq!(world.tokens().len(), 1);
}
