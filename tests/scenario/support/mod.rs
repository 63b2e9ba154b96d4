//! Support for the scenario tests: the real binary as a server ([`server`]) and as a
//! CLI ([`Cli`]), HTTP to it ([`http`]), ADT messages built field by field ([`adt`]),
//! the shared corpus and the test peers.

pub mod adt;
pub mod http;
pub mod server;

pub use adt::AdtMessage;
pub use http::{http_get, http_post, http_request, probe};
pub use server::Server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A scenario `fn(dir, database url)` as two tests, `NAME::sqlite` and
/// `NAME::postgres` (a PostgreSQL database of its own); NAME is the scenario's unless given.
macro_rules! on_both_backends {
    ($scenario:ident) => {
        on_both_backends!($scenario, $scenario);
    };
    ($name:ident, $scenario:ident) => {
        mod $name {
            use super::*;

            #[test]
            fn sqlite() {
                let dir = tempdir();
                $scenario(dir.path(), None);
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                let db = crate::postgres::TestDb::create().await;
                let dir = tempdir();
                let url = db.url.clone();
                tokio::task::spawn_blocking(move || $scenario(dir.path(), Some(&url)))
                    .await
                    .unwrap();
            }
        }
    };
}
pub(crate) use on_both_backends;
