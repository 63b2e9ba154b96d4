//! The outbox claim, with several concurrent claimers: every row delivered exactly once,
//! per-key order kept, an expired lease taken over. PostgreSQL (FOR UPDATE SKIP LOCKED)
//! and SQLite (single writer).

use crate::postgres::TestDb;
use crate::support::tempdir;
use adt_router::store::outbox::{NewNotification, Status};
use adt_router::store::{Store, StoreOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn open(url: String) -> Store {
    Store::connect(&StoreOptions {
        url,
        max_connections: 8,
        busy_timeout: Duration::from_secs(10),
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap()
}

async fn claimers_share_the_work_in_order(store: Store, workers: usize) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 15;
    for i in 0..KEYS * PER_KEY {
        let n = NewNotification {
            notification_key: format!("n-{i}"),
            ordering_key: format!("enc-{}|npi-1", i % KEYS),
            channel: "rest".into(),
            endpoint: "https://example.invalid/hook".into(),
            payload: vec![b'x'; 64],
            due_at_us: 0,
        };
        assert!(store.enqueue(&n, 1).await.unwrap());
        // Enqueue is idempotent on the notification key.
        assert!(!store.enqueue(&n, 1).await.unwrap());
    }
    let log: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (store, log) = (store.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("worker-{w}");
            let mut idle = 0;
            while idle < 20 {
                let claimed = store.claim_due(&owner, 10, i64::MAX, 7).await.unwrap();
                if claimed.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for c in claimed {
                    log.lock().unwrap().push((c.id, c.ordering_key.clone()));
                    assert!(store
                        .finish_claim(c.id, &owner, Status::Delivered, 10, None)
                        .await
                        .unwrap());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(
        log.len(),
        KEYS * PER_KEY,
        "every notification claimed exactly once"
    );
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (id, key) in log.iter() {
        assert!(seen.insert(*id), "row {id} claimed twice");
        if let Some(prev) = last.insert(key, *id) {
            assert!(*id > prev, "{key}: {id} claimed after {prev}");
        }
    }
}

async fn expired_lease_is_taken_over(store: Store) {
    let n = NewNotification {
        notification_key: "lease-1".into(),
        ordering_key: "enc-lease".into(),
        channel: "direct".into(),
        endpoint: "a@direct.example".into(),
        payload: b"p".to_vec(),
        due_at_us: 0,
    };
    store.enqueue(&n, 1).await.unwrap();
    let first = store.claim_due("dead-worker", 100, 200, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        store
            .claim_due("other", 150, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased rows are not claimable"
    );
    let again = store.claim_due("other", 300, 1_000, 10).await.unwrap();
    assert_eq!(again.len(), 1, "an expired lease is claimable");
    assert_eq!(again[0].attempts, 2);
    assert!(
        !store
            .finish_claim(again[0].id, "dead-worker", Status::Delivered, 0, None)
            .await
            .unwrap(),
        "the old owner lost its lease"
    );
    assert!(store
        .finish_claim(again[0].id, "other", Status::Delivered, 0, None)
        .await
        .unwrap());
}

/// One value from the test's own query (the store's pools are public).
async fn scalar(store: &Store, q: &str) -> String {
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(q).fetch_one(s.pool()).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
    }
}

async fn execute(store: &Store, q: &str) {
    match store {
        Store::Sqlite(s) => sqlx::query(q).execute(s.pool()).await.map(|_| ()).unwrap(),
        Store::Postgres(p) => sqlx::query(q).execute(p).await.map(|_| ()).unwrap(),
    }
}

/// A worker whose lease ran out settles nothing but its attempt: while another worker
/// delivered the row, the late "failed" adds no fallback notification and does not
/// put the row's FHIR subscription in error.
async fn a_lapsed_lease_changes_nothing_else(store: Store) {
    use adt_router::store::delivery::{AttemptRow, Settle, SubscriptionChange};
    use adt_router::store::fhir::SubscriptionRow;
    store
        .insert_subscription(&SubscriptionRow {
            id: "sub-lapse".into(),
            owner_role: "admin".into(),
            owner_token: "hospital".into(),
            owner_npis: vec![],
            topic: "t".into(),
            filters: "[]".into(),
            endpoint: "https://example.invalid/fhir".into(),
            content: "id-only".into(),
            status: "active".into(),
            error: None,
            events_since_start: 0,
            resource: "{}".into(),
            created_at_us: 0,
            deleted: false,
            headers: vec![],
            heartbeat_secs: None,
            timeout_secs: None,
        })
        .await
        .unwrap();
    let n = NewNotification {
        notification_key: "lapse-1".into(),
        ordering_key: "enc-lapse".into(),
        channel: "REST".into(),
        endpoint: "https://example.invalid/hook".into(),
        payload: b"p".to_vec(),
        due_at_us: 0,
    };
    store.enqueue(&n, 1).await.unwrap();
    execute(
        &store,
        "UPDATE outbox SET fallbacks = '[[\"DIRECT\",\"a@direct.example\"]]', subscription_id = 'sub-lapse' \
         WHERE notification_key = 'lapse-1'",
    )
    .await;
    let first = store.claim_due("lapsed", 100, 200, 10).await.unwrap();
    let again = store.claim_due("other", 300, 1_000, 10).await.unwrap();
    assert_eq!((first.len(), again.len()), (1, 1));
    let settle = |owner: &str, status: Status, change: Option<SubscriptionChange>| Settle {
        attempt: AttemptRow {
            outbox_id: first[0].id,
            attempt: 1,
            started_at_us: 0,
            channel: adt_router::directory::endpoint::EndpointKind::Rest,
            endpoint: n.endpoint.clone(),
            request_sha256: String::new(),
            outcome: status.as_str().into(),
            response_code: None,
            response_text: String::new(),
            latency_us: 0,
        },
        owner: owner.into(),
        status,
        due_at_us: 0,
        error: None,
        proof: None,
        subscription: change,
    };
    assert_eq!(
        store
            .record_attempts(&[settle("other", Status::Delivered, None)])
            .await
            .unwrap(),
        [true]
    );
    let late = settle(
        "lapsed",
        Status::Failed,
        Some(SubscriptionChange {
            id: "sub-lapse".into(),
            status: "error",
            error: Some("HTTP 410".into()),
        }),
    );
    assert_eq!(store.record_attempts(&[late]).await.unwrap(), [false]);
    assert_eq!(
        scalar(
            &store,
            "SELECT CAST(COUNT(*) AS TEXT) FROM outbox WHERE channel = 'DIRECT'"
        )
        .await,
        "0",
        "no fallback for a delivered row"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT status FROM outbox WHERE notification_key = 'lapse-1'"
        )
        .await,
        "delivered"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT status FROM fhir_subscription WHERE id = 'sub-lapse'"
        )
        .await,
        "active"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT CAST(COUNT(*) AS TEXT) FROM delivery_attempt"
        )
        .await,
        "2",
        "both attempts are in the log: they happened"
    );
}

#[tokio::test]
async fn outbox_claims_on_postgres_are_exclusive_and_ordered() {
    let db = TestDb::create().await;
    let store = open(db.url.clone()).await;
    claimers_share_the_work_in_order(store.clone(), 4).await;
    expired_lease_is_taken_over(store.clone()).await;
    a_lapsed_lease_changes_nothing_else(store).await;
}

#[tokio::test]
async fn outbox_claims_on_sqlite_are_exclusive_and_ordered() {
    let dir = tempdir();
    let store = open(format!("sqlite://{}/o.db", dir.path().display())).await;
    claimers_share_the_work_in_order(store.clone(), 2).await;
    expired_lease_is_taken_over(store.clone()).await;
    a_lapsed_lease_changes_nothing_else(store).await;
}
