//! The same guarantees on PostgreSQL: a database of our own per test.

use crate::storage_failure::{
    assert_closes_while_down, assert_record_matches_engine, assert_rejects_while_down, send_code,
    start_engine, wait_engine, wait_rows, wait_until_accepting,
};
use crate::support::*;
use adt_router::mllp::client::MllpClient;
use sqlx::Connection;
use std::time::Duration;

fn admin_url() -> String {
    std::env::var("ADT_ROUTER_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("adt_router_t_{}_{}", std::process::id(), rand_suffix());
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL at ADT_ROUTER_TEST_PG (default 127.0.0.1:5432) must be running");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        TestDb { name, url }
    }

    pub async fn admin(&self, sql: &str) {
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() % 1_000_000_000
}

#[tokio::test]
async fn corpus_bytes_are_stored_unchanged_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(dir.path(), &[("ADT_ROUTER__DATABASE__URL", &db.url)]);
    crate::corpus::corpus_bytes_are_stored_unchanged(&server).await;
    assert!(
        !dir.path().join("data").exists(),
        "no SQLite file in PostgreSQL mode"
    );
}

impl TestDb {
    /// Refuses new connections and ends the open ones: the database is down.
    pub async fn stop(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .await;
    }

    pub async fn restart(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

async fn stopped_postgres(mode: &str) {
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__URL", &db.url),
            ("ADT_ROUTER__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "2000"),
            ("ADT_ROUTER__MLLP__ON_STORAGE_FAILURE", mode),
        ],
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let before = crate::storage_failure::msg("P-before", false);
    assert_eq!(send_code(&mut c, &before).await.0, "AA");

    db.stop().await;
    if mode == "nack" {
        assert_rejects_while_down(&mut c, "P").await;
    } else {
        assert_closes_while_down(&server.mllp, "P").await;
    }
    assert_eq!(server.get("/readyz").0, 503);

    db.restart().await;
    wait_until_accepting(&server.mllp, "P").await;
    // The event log writer has a connection of its own; readiness pings the main pool,
    // whose connections the database ended, so it may take one more ping to come back.
    wait_for(Duration::from_secs(10), "/readyz back to 200", || {
        server.get("/readyz").0 == 200
    });
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.iter().any(|i| i.contains("down")), "{ids:?}");
}

#[tokio::test]
async fn stopped_postgres_database_gets_ar_ce_and_recovers_nack_mode() {
    stopped_postgres("nack").await;
}

#[tokio::test]
async fn stopped_postgres_database_closes_and_recovers_close_mode() {
    stopped_postgres("close").await;
}

/// An engine-like sender against PostgreSQL: first another session holds a lock on the
/// event log for 3 s (the commit in flight lands after its deadline and is recorded as
/// what the sender heard), then the database stops for 3 s. In `close` mode a stock
/// engine loses nothing; in `nack` mode one set to resend AR/CE loses nothing.
async fn engine_against_postgres_faults(mode: &str, prefix: &str, engine_args: &[&str]) {
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__URL", &db.url),
            ("ADT_ROUTER__DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "1000"),
            ("ADT_ROUTER__MLLP__ON_STORAGE_FAILURE", mode),
        ],
    );
    let mut args = vec!["--count", "60", "--prefix", prefix, "--rate", "20"];
    args.extend_from_slice(engine_args);
    let engine = start_engine(&server.mllp, &args);
    wait_rows(&server, 10).await;
    {
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = admin.begin().await.unwrap();
        sqlx::query("LOCK TABLE inbound_messages IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.commit().await.unwrap();
    }
    wait_rows(&server, 25).await;
    db.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.restart().await;
    let log = wait_engine(engine).await;
    assert_record_matches_engine(&server, &log, &format!("{prefix}-"));
    assert!(
        server.metric("adt_router_event_log_ack_corrections_total{reason=\"late_commit\"}") >= 1.0,
        "the lock should have made a commit land after its deadline"
    );
}

#[tokio::test]
async fn engine_loses_nothing_when_postgres_is_locked_or_stopped_close_mode() {
    engine_against_postgres_faults("close", "PC", &[]).await;
}

#[tokio::test]
async fn engine_that_resends_ar_loses_nothing_when_postgres_fails_nack_mode() {
    engine_against_postgres_faults("nack", "PN", &["--retry-codes", "AR"]).await;
}

#[test]
fn kill_9_under_load_loses_no_acked_message_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let dir = tempdir();
    let env = [("ADT_ROUTER__DATABASE__URL", db.url.as_str())];
    let mut server = Server::start(dir.path(), &env);
    let (acked, sent) = crate::crash::load_until_killed(&mut server, 8, 2000);
    eprintln!("postgres: sent {sent}, AA'd {} before kill -9", acked.len());
    let server = Server::start(dir.path(), &env);
    crate::crash::assert_survived(&server, &acked);
}

/// A PostgreSQL database with `synchronous_commit = off` would let an AA name a message
/// that a database crash loses: `serve` refuses it and says why, unless
/// `database.allow_asynchronous_commit` accepts the risk.
#[tokio::test]
async fn serve_refuses_asynchronous_commit_unless_allowed() {
    let db = TestDb::create().await;
    db.admin(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ))
    .await;
    let dir = tempdir();
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env("ADT_ROUTER__DATABASE__URL", &db.url)
        .env("ADT_ROUTER__MLLP__LISTEN", "127.0.0.1:0")
        .env("ADT_ROUTER__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a database with synchronous_commit = off");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("synchronous_commit"), "{err}");
    assert!(err.contains("allow_asynchronous_commit"), "{err}");

    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__URL", &db.url),
            ("ADT_ROUTER__DATABASE__ALLOW_ASYNCHRONOUS_COMMIT", "true"),
        ],
    );
    assert!(server.log().contains("asynchronous"));
}

async fn open_store(url: &str) -> adt_router::store::Store {
    adt_router::store::Store::connect(&adt_router::store::StoreOptions {
        url: url.to_string(),
        max_connections: 4,
        busy_timeout: std::time::Duration::from_secs(5),
        acquire_timeout: std::time::Duration::from_secs(5),
    })
    .await
    .unwrap()
}

/// A PostgreSQL database made before the two migration sequences were numbered alike
/// (`outbox_live_order` as 0012, and what followed one lower) opens with today's
/// binary: its history is renumbered, nothing is applied twice, its data stays, and a
/// second start changes nothing.
#[tokio::test]
async fn a_database_from_the_old_postgres_numbering_upgrades() {
    let db = TestDb::create().await;
    // The old layout: today's files under their old numbers.
    let old = tempdir();
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).unwrap()
    {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let n: u32 = name[..4].parse().unwrap();
        let renamed = match n {
            12 => continue, // did not exist
            13.. => format!("{:04}{}", n - 1, &name[4..]),
            _ => name.clone(),
        };
        std::fs::copy(&path, old.path().join(renamed)).unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO router_secret (name, value) VALUES ('kept', '\\x0102')")
        .execute(&mut conn)
        .await
        .unwrap();
    for _ in 0..2 {
        let store = open_store(&db.url).await;
        store.close().await;
    }
    let history: Vec<(i64, String, bool)> = sqlx::query_as(
        "SELECT version, description, success FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let versions: Vec<i64> = history.iter().map(|h| h.0).collect();
    assert_eq!(versions, (1..=16).collect::<Vec<i64>>(), "{history:?}");
    assert!(history.iter().all(|h| h.2));
    assert_eq!(history[11].1, "decision key");
    assert_eq!(history[12].1, "outbox live order");
    assert_eq!(history[15].1, "direct report guard");
    let kept: Vec<u8> = sqlx::query_scalar("SELECT value FROM router_secret WHERE name = 'kept'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, [1, 2]);
}

/// The SQLite and PostgreSQL sequences have the same numbers and names, and make the
/// same tables with the same columns, types compared by family.
#[tokio::test]
async fn the_two_migration_sequences_match() {
    let names = |dialect: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!(
            "{}/migrations/{dialect}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
        v.sort();
        v
    };
    assert_eq!(names("sqlite"), names("postgres"));

    let family = |t: &str| -> &'static str {
        let t = t.to_ascii_lowercase();
        if t.contains("int") {
            "integer"
        } else if t.contains("char") || t.contains("text") {
            "text"
        } else if t.contains("blob") || t.contains("bytea") {
            "bytes"
        } else if t.contains("bool") {
            "boolean"
        } else if t.contains("real") || t.contains("double") || t.contains("float") {
            "real"
        } else {
            "other"
        }
    };
    let db = TestDb::create().await;
    let pg = open_store(&db.url).await;
    let dir = tempdir();
    let lite = open_store(&format!("sqlite://{}/m.db", dir.path().display())).await;
    let mut pg_cols: Vec<(String, String, &str)> = match &pg {
        adt_router::store::Store::Postgres(p) => sqlx::query_as::<_, (String, String, String)>(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(p)
        .await
        .unwrap(),
        _ => unreachable!(),
    }
    .into_iter()
    .map(|(t, c, ty)| (t, c, family(&ty)))
    .collect();
    let mut lite_cols: Vec<(String, String, &str)> = match &lite {
        adt_router::store::Store::Sqlite(p) => sqlx::query_as::<_, (String, String, String)>(
            "SELECT m.name, c.name, c.type FROM sqlite_master m JOIN pragma_table_info(m.name) c \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        )
        .fetch_all(p.pool())
        .await
        .unwrap(),
        _ => unreachable!(),
    }
    .into_iter()
    .map(|(t, c, ty)| (t, c, family(&ty)))
    .collect();
    // The known differences: on SQLite these two tables are clustered by their key
    // (WITHOUT ROWID), so they have no surrogate id; nothing reads either by id.
    let clustered_on_sqlite = [("roster_entry", "id"), ("routing_decision", "id")];
    pg_cols.retain(|(t, c, _)| !clustered_on_sqlite.contains(&(t.as_str(), c.as_str())));
    pg_cols.sort();
    lite_cols.sort();
    assert_eq!(lite_cols, pg_cols);
}
