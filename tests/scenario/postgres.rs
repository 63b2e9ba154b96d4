//! The same guarantees on PostgreSQL: a database of our own per test.

use crate::helpers::*;
use crate::storage_failure::{assert_rejects_while_down, send_code, wait_until_accepting};
use adt_router::mllp::client::MllpClient;
use sqlx::Connection;

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

#[tokio::test]
async fn stopped_postgres_database_gets_ar_ce_and_recovers() {
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__DATABASE__URL", &db.url),
            ("ADT_ROUTER__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
            ("ADT_ROUTER__EVENT_LOG__COMMIT_TIMEOUT_MS", "2000"),
        ],
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    assert_eq!(
        send_code(&mut c, &crate::storage_failure::msg("P-before", false))
            .await
            .0,
        "AA"
    );

    db.admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ))
    .await;
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    ))
    .await;
    assert_rejects_while_down(&mut c, "P").await;
    assert_eq!(server.get("/readyz").0, 503);

    db.admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ))
    .await;
    wait_until_accepting(&mut c, "P").await;
    assert_eq!(server.get("/readyz").0, 200);
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.iter().any(|i| i.contains("down")), "{ids:?}");
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
