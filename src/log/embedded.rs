//! The embedded event log: the `inbound_messages` table, written with group commit.
//!
//! Invariants:
//! - One writer task owns all appends. Connections send it a message and wait on a
//!   oneshot; the writer takes everything queued (up to `max_batch`), writes it with one
//!   statement, and answers each waiter only after that statement has committed.
//! - Messages arriving while a commit is in flight wait for the next one: under load the
//!   batches grow by themselves, and one fsync serves many ACKs.
//! - A commit that fails or passes `commit_timeout` fails every message in it. A timed
//!   out commit may still land; the sender then resends and the copy is stored as a
//!   duplicate, which is safe. The reverse (AA without a commit) cannot happen.

use super::LogError;
use crate::metrics::Metrics;
use crate::store::{Appended, NewMessage, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Appended, LogError>>;

#[derive(Clone)]
pub struct EmbeddedLog {
    tx: mpsc::Sender<(NewMessage, Reply)>,
}

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub max_batch: usize,
    pub commit_timeout: Duration,
    pub duplicate_window: Duration,
}

impl EmbeddedLog {
    /// Starts the writer task. It ends when every `EmbeddedLog` clone is dropped, after
    /// committing what was queued.
    pub fn start(
        store: Store,
        opts: EmbeddedOptions,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(opts.max_batch * 16);
        let handle = tokio::spawn(writer(store, opts, metrics, rx));
        (EmbeddedLog { tx }, handle)
    }

    pub async fn append(&self, msg: NewMessage) -> Result<Appended, LogError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((msg, reply))
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?
    }
}

async fn writer(
    store: Store,
    opts: EmbeddedOptions,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<(NewMessage, Reply)>,
) {
    let timeout_ms = opts.commit_timeout.as_millis() as u64;
    let mut rows = Vec::with_capacity(opts.max_batch);
    let mut replies = Vec::with_capacity(opts.max_batch);
    while let Some((first, reply)) = rx.recv().await {
        rows.push(first);
        replies.push(reply);
        while rows.len() < opts.max_batch {
            match rx.try_recv() {
                Ok((m, r)) => {
                    rows.push(m);
                    replies.push(r);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let dup_since = now_us() - opts.duplicate_window.as_micros() as i64;
        let result =
            tokio::time::timeout(opts.commit_timeout, store.append_messages(&rows, dup_since))
                .await;
        metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(appended)) => {
                metrics.commit_batch_size.observe(rows.len() as f64);
                for (reply, a) in replies.drain(..).zip(appended) {
                    let _ = reply.send(Ok(a));
                }
            }
            Ok(Err(e)) => {
                let err = LogError::Unavailable(e.to_string());
                tracing::error!(batch = rows.len(), error = %e, "Event log commit failed; the batch was answered AR/CE.");
                fail_all(&mut replies, err, &metrics);
            }
            Err(_) => {
                tracing::error!(
                    batch = rows.len(),
                    timeout_ms,
                    "Event log commit timed out; the batch was answered AR/CE."
                );
                fail_all(&mut replies, LogError::Timeout(timeout_ms), &metrics);
            }
        }
        rows.clear();
    }
    tracing::debug!("Event log writer stopped.");
}

fn fail_all(replies: &mut Vec<Reply>, err: LogError, metrics: &Metrics) {
    for reply in replies.drain(..) {
        metrics.append_errors.with_label_values(&[err.kind()]).inc();
        let _ = reply.send(Err(err.clone()));
    }
}

pub fn now_us() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}
