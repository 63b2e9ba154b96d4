//! Spawns the real binary and talks to it the way an operator would.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_adt-router");

/// `../shared` beside the checkout, or `ADT_ROUTER_SHARED`.
pub fn shared() -> PathBuf {
    std::env::var_os("ADT_ROUTER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn corpus_dir() -> PathBuf {
    shared().join("corpus/hl7")
}

/// Every corpus file, `invalid/` included, sorted.
pub fn corpus_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [corpus_dir(), corpus_dir().join("invalid")] {
        for e in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus at {}: {e}", dir.display()))
        {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "hl7") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 150,
        "corpus looks incomplete: {} files",
        files.len()
    );
    files
}

pub struct Server {
    child: Option<Child>,
    pub mllp: String,
    pub http: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `adt-router serve` in `dir` (SQLite under `dir/data` unless `env` says
    /// otherwise) on free ports, and waits for the line that says where it listens.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut all: Vec<(String, String)> = vec![
            ("ADT_ROUTER__MLLP__LISTEN".into(), "127.0.0.1:0".into()),
            ("ADT_ROUTER__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("server log");
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .envs(all.iter().cloned())
            .env("ADT_ROUTER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn adt-router");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start; log:\n{}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                )
            });
        let addr = |tag: &str| {
            let i = line
                .find(tag)
                .unwrap_or_else(|| panic!("no '{tag}' in {line:?}"))
                + tag.len();
            line[i..].split([',', ' ']).next().unwrap().to_string()
        };
        // "adt-router listening: MLLP[ over (mutual) TLS] on ADDR, HTTP on ADDR (...)"
        let mllp = {
            let rest = &line[line.find("listening: ").expect("startup line")..];
            let i = rest.find(" on ").unwrap() + 4;
            rest[i..].split([',', ' ']).next().unwrap().to_string()
        };
        Server {
            mllp,
            http: addr("HTTP on "),
            child: Some(child),
            dir: dir.to_path_buf(),
            env: all,
        }
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the server to exit on its own; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `adt-router messages export` with the server's configuration.
    pub fn export(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["messages", "export", "--format", "jsonl"])
            .args(extra)
            .current_dir(&self.dir)
            .envs(self.env.iter().cloned())
            .output()
            .expect("export");
        assert!(
            out.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// Runs another subcommand with the server's configuration.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Cli {
            dir: self.dir.clone(),
            env: self.env.clone(),
        }
        .run(args)
    }

    /// Runs a subcommand that prints one JSON object; it must succeed.
    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http, path)
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every series of metric `name` whose labels include `label`
    /// (`key="value"`), e.g. all facilities' messages answered AA.
    pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| {
                l.split_once('}')
                    .is_some_and(|(labels, _)| labels.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Asserts that [`Server::metric_sum`] reaches `want` within 5 s. An answer is counted
    /// just after it is written, so a client may read it a moment before the count.
    pub fn assert_metric_sum(&self, name: &str, label: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.metric_sum(name, label);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{{{label}}} is {got}, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.1 GET, enough for health and metrics.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path, &[], b"");
    (status, body)
}

/// Starts a Python test peer (`tests/peers/SCRIPT`) with `args` and `env`, and reads
/// the port it prints on its first line.
pub fn spawn_peer(script: &str, args: &[String], env: &[(&str, String)]) -> (Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script);
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{script} printed {line:?}, not its port"));
    (child, port)
}

/// A loopback port free right now (nothing listens on it once this returns).
/// A port free now, for a server the test starts later. Chosen below the kernel's
/// ephemeral range (32768 and up on Linux), so the outgoing connections other tests
/// make meanwhile cannot take it, as they could a port the kernel handed out.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let p = 20_000 + rand::random::<u16>() % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("adt-router-test")
        .tempdir()
        .expect("tempdir")
}

/// The expected answer to a corpus message, derived from the standard, not from our
/// parser: version 2.x, PID-3 present, and MSH-15/16 deciding the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// None: no ACK is sent (enhanced mode, MSH-15 says so, and the server honours it).
    pub code: Option<&'static str>,
    /// Stored in the event log (false: quarantined).
    pub stored: bool,
}

/// What the server answers with its defaults (`mllp.accept_ack = "always"`): a code
/// for every message.
pub fn expect_for(bytes: &[u8]) -> Expect {
    expect_with(bytes, false)
}

/// With `honour_msh15` (`mllp.accept_ack = "honour"`), MSH-15 NE/ER/SU can silence it.
pub fn expect_with(bytes: &[u8], honour_msh15: bool) -> Expect {
    let text = String::from_utf8_lossy(bytes);
    let segs: Vec<&str> = text.split(['\r', '\n']).filter(|s| !s.is_empty()).collect();
    let msh = segs[0];
    let fs = msh.as_bytes()[3] as char;
    let f: Vec<&str> = msh.split(fs).collect();
    let field = |n: usize| f.get(n - 1).copied().unwrap_or("").trim();
    // Rejected outright: not version 2.x, or no message type / control id (MSH-9, MSH-10).
    let version_ok = field(12).starts_with("2.") && !field(9).is_empty() && !field(10).is_empty();
    let pid3 = segs.iter().any(|s| {
        s.starts_with("PID")
            && s.as_bytes().get(3) == Some(&(fs as u8))
            && s.split(fs).nth(3).is_some_and(|v| !v.trim().is_empty())
    });
    let (accept, app) = (field(15), field(16));
    let original = accept.is_empty() && app.is_empty();
    let code = match (original, version_ok, pid3) {
        (true, false, _) => Some("AR"),
        (true, true, false) => Some("AE"),
        (true, true, true) => Some("AA"),
        (false, false, _) => match accept {
            "NE" | "SU" if honour_msh15 => None,
            _ => Some("CR"),
        },
        (false, true, _) => match accept {
            "NE" | "ER" if honour_msh15 => None,
            _ => Some("CA"),
        },
    };
    Expect {
        code,
        stored: version_ok,
    }
}

/// MSH-10 as written in the file.
pub fn control_id_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let msh = text.split(['\r', '\n']).next().unwrap();
    let fs = msh.as_bytes()[3] as char;
    msh.split(fs).nth(9).unwrap_or("").to_string()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// POSTs `body` with extra header lines (`Name: value`); returns status and body.
pub fn http_post(addr: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_request(addr, "POST", path, headers, body);
    (status, body)
}

/// Any request with extra header lines; returns status, response head and body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let mut s = std::net::TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&bytes).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("http read");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Runs CLI subcommands against one database, without a server.
pub struct Cli {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Cli {
    /// SQLite in `dir` unless `db_url` is given.
    pub fn new(dir: &Path, db_url: Option<&str>, env: &[(&str, &str)]) -> Cli {
        let mut all: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(u) = db_url {
            all.push(("ADT_ROUTER__DATABASE__URL".into(), u.to_string()));
        }
        Cli {
            dir: dir.to_path_buf(),
            env: all,
        }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .current_dir(&self.dir)
            .envs(self.env.iter().cloned())
            .output()
            .expect("run adt-router")
    }

    /// Must succeed and print one JSON document.
    /// Writes `csv` to `dir/file` and imports it as the roster of `source`.
    pub fn roster(&self, file: &str, csv: &str, source: &str) -> serde_json::Value {
        let path = self.dir.join(file);
        std::fs::write(&path, csv).unwrap();
        self.json(&[
            "roster",
            "import",
            path.to_str().unwrap(),
            "--source",
            source,
        ])
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Must fail with exit code 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should fail: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
