//! Scale-out mode against a real Kafka-protocol broker (tansu, started per test by the
//! test itself; `scripts/test.sh` installs it) and a real PostgreSQL.

use crate::postgres::TestDb;
use crate::support::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use adt_router::mllp::codec::frame;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    /// Starts a broker on a free port. Tests run in parallel, so two of them can draw
    /// the same port: a broker whose process exits (it lost the race for the port) is
    /// retried on another, so a test never ends up talking to another test's broker.
    pub fn start() -> Broker {
        let bin = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://{addr}"),
                    "--advertised-listener-url",
                    &format!("tcp://{addr}"),
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start tansu ({bin}): {e}; scripts/test.sh installs it")
                });
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // lost the port; try another
                }
                if std::net::TcpStream::connect(&addr).is_ok() {
                    // Ours, not a neighbour's broker that drew the same port?
                    if listens_on(child.id(), port) {
                        return Broker { child, addr };
                    }
                    if child.try_wait().unwrap().is_none() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "tansu did not listen on {addr}"
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("could not start tansu on a free port");
    }

    /// SIGSTOP: the broker stops answering, keeping its data; `resume` continues it.
    /// Returns once every thread of the broker is stopped: the signal is delivered to
    /// each thread on its own time, and one still running could answer a request.
    pub fn pause(&self) {
        let pid = self.child.id();
        assert!(Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        wait_for(Duration::from_secs(10), "the broker to stop", || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    // The state follows the command name, which is in parentheses.
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                })
            })
        });
    }

    pub fn resume(&self) {
        assert!(Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }
}

/// Whether process `pid` holds a socket listening on `port` (Linux /proc).
fn listens_on(pid: u32, port: u16) -> bool {
    let table = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .collect::<String>();
    // Fields: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode.
    let port = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.to_str() == Some(i.as_str())))
    })
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kafka_env<'a>(
    broker: &'a Broker,
    db: &'a TestDb,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("ADT_ROUTER__KAFKA__BROKERS", broker.addr.as_str()),
        ("ADT_ROUTER__DATABASE__URL", db.url.as_str()),
        ("ADT_ROUTER__KAFKA__PARTITIONS", "4"),
        ("ADT_ROUTER__KAFKA__SESSION_TIMEOUT_MS", "6000"),
    ];
    env.extend_from_slice(extra);
    env
}

/// Every record on the topic: (partition, key, headers, payload).
type TopicRecord = (i32, String, HashMap<String, String>, Vec<u8>);

fn read_topic(broker: &Broker, topic: &str, partitions: i32, expect: usize) -> Vec<TopicRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                headers,
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

fn non_duplicate_counts(server: &Server) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in server.export(&[]) {
        if !r["duplicate"].as_bool().unwrap() {
            *counts
                .entry(r["control_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn corpus_goes_to_the_topic_with_keys_and_headers_and_into_postgres() {
    let broker = Broker::start();
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(dir.path(), &kafka_env(&broker, &db, &[]));
    assert!(
        server.log().contains("Created Kafka topic."),
        "topic creation is announced"
    );
    // Created with min.insync.replicas, and checked: one broker is a development
    // set-up, so no durability warning.
    let log = server.log();
    assert!(log.contains("min_insync_replicas"), "{log}");
    assert!(log.contains("Kafka topic durability checked"), "{log}");
    assert!(!log.contains("can be lost with one broker"), "{log}");
    // Same check as the embedded mode: every accepted file's bytes end up stored.
    crate::corpus::corpus_bytes_are_stored_unchanged(&server).await;
    let stored = server.export(&[]).len();
    let records = read_topic(&broker, "adt.inbound", 4, stored);
    assert_eq!(records.len(), stored, "one record per accepted message");
    for (partition, key, headers, payload) in &records {
        assert!((0..4).contains(partition));
        assert_eq!(headers["adt-sha256"], sha256_hex(payload));
        assert_eq!(headers["adt-control-id"], control_id_of(payload));
        assert!(headers["adt-message-type"].starts_with("ADT^"));
        assert!(!headers["adt-charset"].is_empty());
        // facility|patient-id^authority, or facility|#control-id without PID-3.
        assert!(key.contains('|'), "{key}");
    }
    assert_eq!(server.get("/readyz").0, 200);
    assert!(server.metric("adt_router_kafka_produce_latency_seconds_count") >= stored as f64);
    assert!(server.metric("adt_router_kafka_records_processed_total{outcome=\"stored\"}") >= 1.0);
}

#[tokio::test]
async fn one_patients_events_reach_the_router_in_the_order_they_were_acked() {
    let broker = Broker::start();
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(dir.path(), &kafka_env(&broker, &db, &[]));
    let conns: Vec<Arc<Mutex<MllpClient>>> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(Arc::new(Mutex::new(
                MllpClient::connect(&server.mllp).await.unwrap(),
            )));
        }
        v
    };
    const PATIENTS: usize = 100;
    const PER_PATIENT: usize = 100;
    let mut tasks = Vec::new();
    for p in 0..PATIENTS {
        let conns = conns.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..PER_PATIENT {
                // Each event of a patient goes out on another connection, only after the
                // previous one was ACKed: the ACK order is the sequence number k.
                let c = &conns[(p + k) % conns.len()];
                let m = format!("MSH|^~\\&|EPIC|GENHOSP|R|R|20260101||ADT^A08|P{p}-{k}|P|2.5.1\rPID|1||MRN{p}^^^GENHOSP^MR\rPV1|1|I\r");
                let ack = c.lock().await.send(m.as_bytes(), Duration::from_secs(30)).await.unwrap();
                assert_eq!(summarize_ack(&ack).code, "AA");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Eight senders at once: writes went through both producers (the lingering one
    // while four or more others waited), and the order checks below hold across them.
    let busy = server.metric("adt_router_kafka_produced_total{producer=\"busy\"}");
    let immediate = server.metric("adt_router_kafka_produced_total{producer=\"immediate\"}");
    assert!(
        busy > 0.0 && immediate > 0.0,
        "busy {busy}, immediate {immediate}"
    );
    assert_eq!((busy + immediate) as usize, PATIENTS * PER_PATIENT);
    let total = PATIENTS * PER_PATIENT;
    wait_for(
        Duration::from_secs(180),
        "router to store everything",
        || server.export(&[]).len() >= total,
    );
    let rows = server.export(&[]);
    assert_eq!(rows.len(), total);
    // Lag is reported per partition (every 5 s) and is zero once everything is stored.
    wait_for(
        Duration::from_secs(30),
        "consumer lag to be reported as zero",
        || {
            let (_, body) = server.get("/metrics");
            let lags: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("adt_router_kafka_consumer_lag{partition="))
                .collect();
            lags.len() == 4 && lags.iter().all(|l| l.ends_with(" 0"))
        },
    );
    let mut last: HashMap<usize, usize> = HashMap::new();
    for r in &rows {
        // Export is in stored (id) order: the order the router processed them.
        let id = r["control_id"].as_str().unwrap();
        let (p, k) = id[1..].split_once('-').unwrap();
        let (p, k): (usize, usize) = (p.parse().unwrap(), k.parse().unwrap());
        if let Some(prev) = last.insert(p, k) {
            assert!(
                k == prev + 1,
                "patient {p}: event {k} processed after {prev}"
            );
        } else {
            assert_eq!(k, 0, "patient {p} started at {k}");
        }
    }
}

/// Sends `n` messages `{prefix}-{i}` and checks each is answered AA; returns their ids.
async fn send_all_accepted(c: &mut MllpClient, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let ack = c
            .send(
                &crate::storage_failure::msg(&id, false),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(summarize_ack(&ack).code, "AA", "{id}");
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_stopped_broker_gets_ar_ce_never_aa_and_nothing_acked_is_lost() {
    let broker = Broker::start();
    let db = TestDb::create().await;
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &kafka_env(
            &broker,
            &db,
            &[
                ("ADT_ROUTER__KAFKA__PRODUCE_TIMEOUT_MS", "1500"),
                ("ADT_ROUTER__MLLP__ON_STORAGE_FAILURE", "nack"),
            ],
        ),
    );
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let msg = crate::storage_failure::msg;
    let mut acked = send_all_accepted(&mut c, "B-before", 50).await;
    broker.pause();
    let s = summarize_ack(
        &c.send(&msg("B-down-1", false), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    assert_eq!(s.code, "AR", "{s:?}");
    let s = summarize_ack(
        &c.send(&msg("B-down-2", true), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    assert_eq!(s.code, "CE", "{s:?}");
    assert!(
        server.metric("adt_router_kafka_produce_errors_total{kind=\"broker\"}")
            + server.metric("adt_router_kafka_produce_errors_total{kind=\"timeout\"}")
            >= 2.0
    );
    broker.resume();
    // The listener recovers by itself; the sender resends what was refused.
    let mut recovered = false;
    for i in 0..60 {
        let id = format!("B-down-{}", 1 + i % 2);
        let s = summarize_ack(
            &c.send(&msg(&id, i % 2 == 1), Duration::from_secs(10))
                .await
                .unwrap(),
        );
        if s.code == "AA" || s.code == "CA" {
            acked.push(id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "no AA after the broker came back");
    acked.extend(send_all_accepted(&mut c, "B-after", 50).await);
    wait_for(Duration::from_secs(120), "router to catch up", || {
        let counts = non_duplicate_counts(&server);
        acked.iter().all(|id| counts.contains_key(id))
    });
    let counts = non_duplicate_counts(&server);
    for id in &acked {
        assert_eq!(counts[id], 1, "{id} stored {} times", counts[id]);
    }
}

/// Two routers in one group share the partitions; one is killed with SIGKILL mid-stream;
/// the survivor takes over its partitions (cooperative rebalancing) and finishes. Every
/// record is stored exactly once, and a replay of the whole topic changes nothing.
#[tokio::test]
async fn two_routers_share_the_partitions_and_survive_kill_9_without_loss_or_double_processing() {
    let broker = Broker::start();
    let db = TestDb::create().await;
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = Server::start(dir_a.path(), &kafka_env(&broker, &db, &[]));
    let mut b = Server::start(dir_b.path(), &kafka_env(&broker, &db, &[]));
    wait_for(
        Duration::from_secs(120),
        "both routers to get partitions",
        || {
            a.metric("adt_router_kafka_rebalances_total{kind=\"assign\"}") >= 1.0
                && b.metric("adt_router_kafka_rebalances_total{kind=\"assign\"}") >= 1.0
        },
    );
    let mut c = MllpClient::connect(&a.mllp).await.unwrap();
    let total = 3000;
    for i in 0..total {
        let m = format!("MSH|^~\\&|EPIC|GENHOSP|R|R|20260101||ADT^A08|R-{i}|P|2.5.1\rPID|1||MRN{}^^^GENHOSP^MR\rPV1|1|I\r", i % 97);
        c.send_raw(&frame(m.as_bytes())).await.unwrap();
        assert_eq!(
            summarize_ack(&c.recv(Duration::from_secs(10)).await.unwrap()).code,
            "AA"
        );
        if i == total / 3 {
            wait_for(
                Duration::from_secs(60),
                "both routers to have processed records",
                || {
                    a.metric("adt_router_kafka_records_processed_total{outcome=\"stored\"}") > 0.0
                        && b.metric("adt_router_kafka_records_processed_total{outcome=\"stored\"}")
                            > 0.0
                },
            );
            b.kill9();
        }
    }
    // Only A is alive and nothing is replayed: storing everything means it took over
    // B's partitions, including B's records that were taken but not committed.
    wait_for(
        Duration::from_secs(120),
        "the surviving router to finish alone",
        || a.export(&[]).len() >= total,
    );
    let rows = a.export(&[]);
    assert_eq!(
        rows.len(),
        total,
        "no record processed twice into the store"
    );
    let ids: HashSet<&str> = rows
        .iter()
        .map(|r| r["control_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total, "no record lost");
    assert!(rows.iter().all(|r| r["duplicate"] == false));

    // Replaying the whole topic changes nothing.
    let summary = a.run_json(&["replay", "--since", "2000-01-01T00:00:00Z"]);
    assert_eq!(summary["records"], total, "{summary}");
    assert_eq!(summary["already_stored"], total, "{summary}");
    assert_eq!(summary["stored"], 0, "{summary}");
    assert_eq!(a.export(&[]).len(), total);
}

/// Records written by someone else that are not HL7 go to quarantine with their origin,
/// and the partition keeps moving; a replay does not quarantine them twice.
#[tokio::test]
async fn bad_records_are_quarantined_and_never_block_the_partition() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start();
    let db = TestDb::create().await;
    let dir = tempdir();
    // One partition, so the good message queues behind the bad ones.
    let server = Server::start(
        dir.path(),
        &kafka_env(&broker, &db, &[("ADT_ROUTER__KAFKA__PARTITIONS", "1")]),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for (i, junk) in [
        &b"not hl7 at all"[..],
        b"MSH|^~\\&|A|F|R|R|2026||ADT^A01||P|2.5\rPID|||1",
        b"",
    ]
    .iter()
    .enumerate()
    {
        producer
            .send(
                FutureRecord::to("adt.inbound")
                    .key(&format!("junk-{i}"))
                    .payload(*junk),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let mut c = MllpClient::connect(&server.mllp).await.unwrap();
    let m = b"MSH|^~\\&|EPIC|GENHOSP|R|R|2026||ADT^A04|GOOD-1|P|2.5.1\rPID|1||M1^^^GENHOSP^MR\rPV1|1|E\r";
    assert_eq!(
        summarize_ack(&c.send(m, Duration::from_secs(10)).await.unwrap()).code,
        "AA"
    );
    wait_for(
        Duration::from_secs(60),
        "the good message behind the bad records",
        || server.export(&[]).len() == 1,
    );
    assert_eq!(
        server.metric("adt_router_kafka_records_processed_total{outcome=\"quarantined\"}"),
        3.0
    );
    let count = || async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::query_as::<_, (i64, i64)>("SELECT COUNT(*), COUNT(log_offset) FROM quarantine")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(
        count().await,
        (3, 3),
        "three quarantined records, each with its origin"
    );
    let summary = server.run_json(&["replay", "--from-offset", "0:0"]);
    assert_eq!(summary["records"], 4, "{summary}");
    assert_eq!(
        count().await,
        (3, 3),
        "a replay does not quarantine them twice"
    );
    assert_eq!(server.export(&[]).len(), 1);
}
