//! The embedded event log: the `inbound_messages` table, written with group commit.
//!
//! Invariants:
//! - One writer owns all appends: a thread with its own SQLite connection, or a task on
//!   the PostgreSQL pool. Connections send it a message and wait on a oneshot; the writer
//!   takes everything queued (up to `max_batch`), writes it with one statement, and
//!   answers each waiter only after that statement has committed.
//! - Messages arriving while a commit is in flight wait for the next one: under load the
//!   batches grow by themselves, and one fsync serves many ACKs.
//! - A commit that fails fails every message in it. A waiter that hears nothing within
//!   `commit_timeout` gives up with [`LogError::Timeout`] (AR/CE to the sender). That
//!   commit may still land; the sender then resends and the copy is stored as a
//!   duplicate, which is safe. The reverse (AA without a commit) cannot happen.

use super::LogError;
use crate::metrics::Metrics;
use crate::store::sqlite_writer::SqliteWriter;
use crate::store::{Appended, NewMessage, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Appended, LogError>>;
type Job = (NewMessage, Reply);

/// A batch being committed: rows and their waiters, index for index.
struct Batch {
    rows: Vec<NewMessage>,
    replies: Vec<Reply>,
}

impl Batch {
    fn new(cap: usize) -> Self {
        Batch {
            rows: Vec::with_capacity(cap),
            replies: Vec::with_capacity(cap),
        }
    }
    fn push(&mut self, (row, reply): Job) {
        self.rows.push(row);
        self.replies.push(reply);
    }
}

#[derive(Clone)]
pub struct EmbeddedLog {
    tx: mpsc::Sender<Job>,
    commit_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub max_batch: usize,
    pub commit_timeout: Duration,
    pub duplicate_window: Duration,
    /// SQLite: how long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
}

/// Ends when every [`EmbeddedLog`] clone is dropped, after committing what was queued.
pub enum WriterHandle {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl WriterHandle {
    pub async fn join(self) {
        match self {
            WriterHandle::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            WriterHandle::Task(t) => {
                let _ = t.await;
            }
        }
    }
}

impl EmbeddedLog {
    /// Starts the writer for the store's backend.
    pub fn start(
        store: &Store,
        opts: EmbeddedOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, WriterHandle), StoreError> {
        let (tx, rx) = mpsc::channel(opts.max_batch * 16);
        let handle = match store {
            Store::Sqlite(_) => {
                let path = store.sqlite_path().expect("sqlite store has a path");
                let writer = SqliteWriter::open(&path, opts.busy_timeout, opts.max_batch)?;
                let opts = opts.clone();
                WriterHandle::Thread(
                    std::thread::Builder::new()
                        .name("event-log-writer".into())
                        .spawn(move || sqlite_loop(writer, opts, metrics, rx))
                        .map_err(|e| StoreError::DataDir {
                            path: path.display().to_string(),
                            source: e,
                        })?,
                )
            }
            Store::Postgres(pool) => WriterHandle::Task(tokio::spawn(pg_loop(
                pool.clone(),
                opts.clone(),
                metrics,
                rx,
            ))),
        };
        Ok((
            EmbeddedLog {
                tx,
                commit_timeout: opts.commit_timeout,
            },
            handle,
        ))
    }

    pub async fn append(&self, msg: NewMessage) -> Result<Appended, LogError> {
        let (reply, wait) = oneshot::channel();
        let ms = self.commit_timeout.as_millis() as u64;
        let sent = tokio::time::timeout(self.commit_timeout, self.tx.send((msg, reply))).await;
        match sent {
            Err(_) => return Err(LogError::Timeout(ms)),
            Ok(Err(_)) => return Err(LogError::Closed),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout(self.commit_timeout, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LogError::Closed),
            Err(_) => Err(LogError::Timeout(ms)),
        }
    }
}

/// Adds whatever is already queued to `batch`, up to `max`.
fn fill(batch: &mut Batch, rx: &mut mpsc::Receiver<Job>, max: usize) {
    while batch.rows.len() < max {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

/// Answers every waiter of a batch and records the commit.
fn finish(
    batch: &mut Batch,
    result: Result<Vec<Appended>, StoreError>,
    started: Instant,
    metrics: &Metrics,
) {
    metrics
        .commit_latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(appended) => {
            metrics.commit_batch_size.observe(batch.rows.len() as f64);
            for (reply, a) in batch.replies.drain(..).zip(appended) {
                let _ = reply.send(Ok(a));
            }
        }
        Err(e) => {
            tracing::error!(batch = batch.rows.len(), error = %e, "Event log commit failed; the batch was answered AR/CE.");
            let err = LogError::Unavailable(e.to_string());
            for reply in batch.replies.drain(..) {
                metrics.append_errors.with_label_values(&[err.kind()]).inc();
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
    batch.rows.clear();
}

fn sqlite_loop(
    mut writer: SqliteWriter,
    opts: EmbeddedOptions,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch = Batch::new(opts.max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        fill(&mut batch, &mut rx, opts.max_batch);
        let started = Instant::now();
        let result = writer.append(
            &batch.rows,
            now_us() - opts.duplicate_window.as_micros() as i64,
        );
        finish(&mut batch, result, started, &metrics);
    }
    tracing::debug!("Event log writer stopped.");
}

async fn pg_loop(
    pool: sqlx::PgPool,
    opts: EmbeddedOptions,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch = Batch::new(opts.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        fill(&mut batch, &mut rx, opts.max_batch);
        let started = Instant::now();
        let since = now_us() - opts.duplicate_window.as_micros() as i64;
        let result = match tokio::time::timeout(
            opts.commit_timeout,
            Store::append_messages_pg(&pool, &batch.rows, since),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
        };
        finish(&mut batch, result, started, &metrics);
    }
    tracing::debug!("Event log writer stopped.");
}

pub use crate::store::now_us;
