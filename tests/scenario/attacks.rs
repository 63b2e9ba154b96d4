//! Attacks on the trust boundaries, against the real binary over the network (issue 19;
//! docs/security.md). Each test asserts that the attack fails and nothing changed.

use crate::helpers::*;
use adt_router::mllp::client::{summarize_ack, MllpClient};
use std::time::Duration;

/// A sender inventing 10,000 sending facilities cannot grow `/metrics` without bound:
/// the first `metrics.max_label_values` (200) keep their series, the rest count as
/// `other`, and every message is still stored and answered.
#[tokio::test]
async fn ten_thousand_invented_facilities_leave_the_metric_series_capped() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let per_conn = 1250;
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let addr = server.mllp.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = MllpClient::connect(&addr).await.unwrap();
            for i in 0..per_conn {
                let n = conn * per_conn + i;
                let m = format!(
                    "MSH|^~\\&|APP|FAC{n:05}|R|R|20260101||ADT^A01|C{n}|P|2.5.1\rPID|1||M{n}^^^F\r"
                );
                let ack = c.send(m.as_bytes(), Duration::from_secs(30)).await.unwrap();
                assert_eq!(summarize_ack(&ack).code, "AA");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, body) = server.get("/metrics");
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("adt_router_messages_received_total{"))
        .collect();
    assert!(series.len() <= 201, "{} series", series.len());
    assert_eq!(
        server.metric_sum(
            "adt_router_messages_received_total",
            "sending_facility=\"other\""
        ),
        9800.0
    );
    assert_eq!(
        server.metric_sum("adt_router_messages_received_total", "ack_code=\"AA\""),
        10000.0
    );
    assert_eq!(server.export(&[]).len(), 10000);
}
