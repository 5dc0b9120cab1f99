//! Test servers: in-process (`TestServer`, via `outpost::run`) and child processes
//! (`ChildServer`, the real binary), each over a fresh temp data dir.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost::Config;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

pub fn config_for(dir: &Path) -> Config {
    let mut c = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    c.store.min_free_disk_bytes = 0;
    // Nothing a test registers is called off this machine, whatever its URL says.
    c.egress.allowed_only = true;
    c
}

/// A server running inside the test process.
pub struct TestServer {
    pub base: String,
    pub key: String,
    pub config: Config,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), outpost::RunError>>>,
    /// Keeps the temp data dir alive as long as the server.
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_tuned(|_| {}).await
    }

    /// As `start`, with `tune` applied to the config first.
    pub async fn start_tuned(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config_for(dir.path());
        tune(&mut config);
        let mut s = Self::start_with(config).await;
        s.dir = Some(dir);
        s
    }

    /// A handle on a server running elsewhere (a `ChildServer`), for the helpers that take a
    /// `TestServer`; stopping it is the caller's business.
    pub fn attached(base: String, key: String) -> Self {
        Self { base, key, config: Config::default(), http: reqwest::Client::new(), stop: None, task: None, dir: None }
    }

    /// Starts on an existing data dir (which the caller keeps alive).
    pub async fn start_with(config: Config) -> Self {
        Self::start_with_scheme(config, "http").await
    }

    /// As `start_with`, for a server that speaks `scheme` (`https` with a TLS config).
    pub async fn start_with_scheme(config: Config, scheme: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(config, scheme, listener).await
    }

    /// As `start_with`, on a listener the test made (socket options, say).
    pub async fn start_on(config: Config, scheme: &str, listener: tokio::net::TcpListener) -> Self {
        let c = config.clone();
        let (_, key) = tokio::task::spawn_blocking(move || outpost::commands::create_operator_key(&c, "test"))
            .await
            .expect("join")
            .expect("operator key");
        let base = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(outpost::run(listener, config.clone(), async move {
            let _ = rx.await;
        }));
        let s = Self { base, key, config, http: reqwest::Client::new(), stop: Some(stop), task: Some(task), dir: None };
        if scheme == "http" {
            s.wait_ready().await;
        }
        s
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
                last = r.text().await.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let finished = self.task.as_ref().is_some_and(tokio::task::JoinHandle::is_finished);
        panic!("server did not become ready (task finished: {finished}): {last}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.key)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.key).json(body)
    }

    /// Creates an organization and returns its JSON.
    pub async fn create_org(&self, slug: &str) -> Value {
        let r =
            self.post("/v1/orgs", &json!({ "slug": slug, "name": format!("Org {slug}") })).send().await.expect("send");
        assert_eq!(r.status(), 201, "create {slug}");
        r.json().await.expect("json")
    }

    /// Stops the server, keeping its temp data dir alive as long as the returned guard.
    pub async fn stop_keep_dir(mut self) -> Option<tempfile::TempDir> {
        let dir = self.dir.take();
        self.stop().await;
        dir
    }

    /// Stops the server the way SIGTERM would, and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("server ran");
        }
    }
}

/// The real binary as a child process.
pub struct ChildServer {
    pub child: Child,
    pub base: String,
    /// Everything it wrote (stdout and stderr), as it comes.
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChildServer {
    /// Starts `outpost serve` on `dir` and waits for its ready log line.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_env(dir, &[])
    }

    /// As `start`, with extra environment (configuration) for the server.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_listening(dir, "127.0.0.1:0", env)
    }

    /// As `start_with_env`, on `listen` (an address the test chose, to name it in the
    /// configuration too).
    pub fn start_listening(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--data"])
            .arg(dir)
            .env("OUTPOST_LOG__FORMAT", "json")
            .env("OUTPOST_LOG__LEVEL", "info")
            .env("OUTPOST_STORE__MIN_FREE_DISK_BYTES", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outpost");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let kept = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut o = kept.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let base = loop {
            assert!(Instant::now() < deadline, "no ready line from the server");
            let Some(Ok(line)) = lines.next() else { panic!("server exited before it was ready") };
            let mut o = output.lock().unwrap();
            o.push_str(&line);
            o.push('\n');
            drop(o);
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "outpost is ready" {
                break format!("http://{}", v["fields"]["listen"].as_str().expect("listen"));
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        let kept = output.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut o = kept.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        Self { child, base, output }
    }

    /// What it has written so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn kill9(self) {
        drop(self);
    }
}

impl Drop for ChildServer {
    /// SIGKILL, so a test that fails midway leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args`; (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run outpost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn expect_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(ct.starts_with("application/problem+json"), "content type {ct}");
    let body: Value = resp.json().await.expect("problem json");
    assert_eq!(body["code"], code, "code in {body}");
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with(code)));
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

/// A slug unique within this test run.
pub fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", &outpost::ids::Id::new().0.simple().to_string()[20..])
}

/// GETs `path` with `token` and returns the JSON answer (whatever its status).
pub async fn get_json(s: &TestServer, token: &str, path: &str) -> Value {
    s.http.get(s.url(path)).bearer_auth(token).send().await.expect("send").json().await.expect("json")
}

/// POSTs `body` to `path` with `token` and returns the JSON answer (whatever its status).
pub async fn post_json(s: &TestServer, token: &str, path: &str, body: Value) -> Value {
    s.http.post(s.url(path)).bearer_auth(token).json(&body).send().await.expect("send").json().await.expect("json")
}

/// The Python of the peer clients (`.venv-peers`), which the test command installs.
pub fn peer_python() -> &'static str {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-peers/bin/python");
    assert!(
        Path::new(python).exists(),
        "the peer clients are missing: `bash scripts/test-all.sh` installs them into .venv-peers"
    );
    python
}

/// Serves `app` on a free loopback port (bound before it returns, so no wait is needed); its
/// base URL.
pub async fn serve_loopback(app: impl poem::Endpoint + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).expect("acceptor");
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}")
}

/// Runs `script` with the peers' Python, `input` as JSON on its stdin; its output's lines.
pub async fn python_lines(script: &str, input: &Value) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(peer_python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.to_string().as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_owned).collect()
}

/// A browser's part in sign-in flows: it follows redirects itself and keeps the cookies it is
/// given, per host (not port, as browsers do) and path, sending a `Secure` one only over https
/// and dropping one that a later answer expires. reqwest's own cookie store would do, but its
/// feature (with what it pulls in) would make the tests' build of reqwest, `url` and everything
/// over them differ from the shipped binary's, and so be compiled twice.
pub struct Browser {
    http: reqwest::Client,
    jar: std::sync::Mutex<Vec<Cookie>>,
}

struct Cookie {
    host: String,
    path: String,
    name: String,
    value: String,
    secure: bool,
}

impl Browser {
    /// How many redirects one navigation follows.
    const HOPS_MAX: usize = 20;

    pub fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { http, jar: std::sync::Mutex::new(Vec::new()) }
    }

    /// GETs `url` and follows its redirects; the last answer (its `url()` is where it landed).
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.navigate(self.http.get(url)).await
    }

    /// Submits a form to `url` and follows the redirects (with GET, as browsers do).
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.navigate(self.http.post(url).form(form)).await
    }

    async fn navigate(&self, first: reqwest::RequestBuilder) -> reqwest::Response {
        let mut request = first.build().expect("request");
        for _ in 0..=Self::HOPS_MAX {
            if let Some(cookies) = self.cookies_for(request.url()) {
                request.headers_mut().insert(reqwest::header::COOKIE, cookies.parse().expect("cookie header"));
            }
            let r = self.http.execute(request).await.expect("send");
            self.keep(&r);
            let location = r.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
            let (true, Some(location)) = (r.status().is_redirection(), location) else { return r };
            let next = r.url().join(location).expect("a redirect to a URL");
            request = self.http.get(next).build().expect("request");
        }
        panic!("more than {} redirects", Self::HOPS_MAX);
    }

    fn cookies_for(&self, url: &reqwest::Url) -> Option<String> {
        let host = url.host_str()?;
        let path = url.path();
        let jar = self.jar.lock().expect("jar");
        let sent: Vec<String> = jar
            .iter()
            .filter(|c| c.host == host && (!c.secure || url.scheme() == "https"))
            .filter(|c| {
                path == c.path
                    || path
                        .strip_prefix(c.path.as_str())
                        .is_some_and(|rest| c.path.ends_with('/') || rest.starts_with('/'))
            })
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!sent.is_empty()).then(|| sent.join("; "))
    }

    /// Takes the answer's `Set-Cookie` headers into the jar (RFC 6265, as far as these flows
    /// need: name and value, `Path` or the default path, `Secure`, and expiry as removal).
    fn keep(&self, r: &reqwest::Response) {
        let Some(host) = r.url().host_str() else { return };
        let default_path = match r.url().path().rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(at) => r.url().path()[..at].to_owned(),
        };
        let mut jar = self.jar.lock().expect("jar");
        for header in r.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(header) = header.to_str() else { continue };
            let mut parts = header.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { continue };
            let (mut path, mut secure, mut expired) = (default_path.clone(), false, false);
            for attribute in parts {
                let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
                match key.to_ascii_lowercase().as_str() {
                    "path" if val.starts_with('/') => val.clone_into(&mut path),
                    "secure" => secure = true,
                    "max-age" => expired |= val.trim().parse::<i64>().is_ok_and(|s| s <= 0),
                    // The past that servers write to remove a cookie.
                    "expires" => expired |= val.contains("1970"),
                    _ => {}
                }
            }
            jar.retain(|c| !(c.host == host && c.path == path && c.name == name));
            if !expired {
                jar.push(Cookie {
                    host: host.to_owned(),
                    path,
                    name: name.to_owned(),
                    value: value.to_owned(),
                    secure,
                });
            }
        }
    }
}
