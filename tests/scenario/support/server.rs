//! The real binary as a server: started on free ports, ready when `/healthz` answers,
//! killed when the test drops it.

use super::{free_port, http_get, probe, Cli, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub mllp: String,
    pub http: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `adt-router serve` in `dir` (SQLite under `dir/data` unless `env` says
    /// otherwise) on free ports, and waits until it answers `/healthz`: both listeners
    /// are bound before the HTTP server answers. Its stderr is `dir/server.log`, its
    /// stdout `dir/server.out`.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        let given = |key: &str| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        // A port chosen here, not by the kernel: the test knows where to probe.
        let listen = |key: &str| match given(key) {
            Some(v) if !v.ends_with(":0") => v,
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let mllp = listen("ADT_ROUTER__MLLP__LISTEN");
        let http = listen("ADT_ROUTER__HTTP__LISTEN");
        let mut all: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .filter(|(k, _)| k != "ADT_ROUTER__MLLP__LISTEN" && k != "ADT_ROUTER__HTTP__LISTEN")
            .collect();
        all.push(("ADT_ROUTER__MLLP__LISTEN".into(), mllp.clone()));
        all.push(("ADT_ROUTER__HTTP__LISTEN".into(), http.clone()));
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .expect("server output file")
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .envs(all.iter().cloned())
            .env("ADT_ROUTER_LOG", "info")
            .stdout(open("server.out"))
            .stderr(open("server.log"))
            .spawn()
            .expect("spawn adt-router");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!(
                    "server exited ({status}) before it was ready; log:\n{}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            if probe(&http, "/healthz") == Some(200) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "server not ready within 60 s; log:\n{}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Server {
            mllp,
            http,
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
