//! The embedded event log: the `inbound_messages` table, written with group commit.
//!
//! Invariants:
//! - One writer owns all appends: a thread with its own SQLite connection, or a task on
//!   the PostgreSQL pool. Connections send it a message and wait on a oneshot; the writer
//!   takes everything queued (up to `max_batch`), writes it with one statement, and
//!   answers each waiter only after that statement has committed.
//! - Messages arriving while a commit is in flight wait for the next one: under load the
//!   batches grow by themselves, and one fsync serves many ACKs.
//! - A commit that fails fails every message in it (the sender hears "not stored").
//! - Each append has a deadline (`commit_timeout`). The waiter and the writer settle who
//!   owns the outcome with one compare-and-swap on the job's [`Claim`]:
//!   - a job whose deadline passed before its commit began is abandoned, never written;
//!   - a waiter that gives up while its commit is in flight tells the sender "not
//!     stored"; if that commit lands after all, the writer corrects the row's `ack_code`
//!     to what the sender was told. The row stays the first copy, the sender's resend is
//!     stored as a duplicate, and nothing is routed twice;
//!   - AA without a commit cannot happen.
//! - `ack_code` is what reached the wire: [`EmbeddedLog::correct_ack`] rewrites it when
//!   an ACK could not be written after all.

use super::LogError;
use crate::metrics::Metrics;
use crate::store::sqlite_writer::SqliteWriter;
use crate::store::{Appended, LogWriter, NewMessage, Store, StoreError};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Appended, LogError>>;

/// Who owns an append's outcome; moves forward only, by compare-and-swap.
struct Claim(AtomicU8);

impl Claim {
    /// In the queue; the writer has not looked at it.
    const QUEUED: u8 = 0;
    /// The writer took it into a commit.
    const COMMITTING: u8 = 1;
    /// Not written, and never will be: its deadline passed before its commit began.
    const ABANDONED: u8 = 2;
    /// The waiter told the sender "not stored" while its commit was in flight.
    const GAVE_UP: u8 = 3;
    /// Committed, and the writer answers the waiter.
    const DONE: u8 = 4;

    fn new() -> Arc<Self> {
        Arc::new(Claim(AtomicU8::new(Self::QUEUED)))
    }
    fn advance(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

/// One append, as the writer sees it.
struct Job {
    row: NewMessage,
    reply: Reply,
    claim: Arc<Claim>,
    deadline: Instant,
    /// What the sender hears if this append fails ("none": no ACK at all).
    unstored_ack: &'static str,
}

/// The writer's work: appends, and corrections of what a stored row says was sent.
/// Appends are nearly all of it, so they are not boxed (that would allocate per message).
#[allow(clippy::large_enum_variant)]
enum Work {
    Append(Job),
    CorrectAck(AckFix),
}

/// `ack_code` of row `id` becomes `code`.
#[derive(Clone, Copy, Debug)]
pub struct AckFix {
    pub id: i64,
    pub code: &'static str,
}

/// A batch being committed: rows and their jobs, index for index.
struct Batch {
    rows: Vec<NewMessage>,
    jobs: Vec<(Reply, Arc<Claim>, &'static str)>,
    fixes: Vec<AckFix>,
}

impl Batch {
    fn new(cap: usize) -> Self {
        Batch {
            rows: Vec::with_capacity(cap),
            jobs: Vec::with_capacity(cap),
            fixes: Vec::new(),
        }
    }

    /// Takes one piece of work. An append whose deadline has passed, or whose waiter has
    /// already given up, is abandoned here, before its commit begins.
    fn push(&mut self, work: Work, now: Instant) {
        match work {
            Work::CorrectAck(fix) => self.fixes.push(fix),
            Work::Append(job) => {
                let late = now >= job.deadline || job.reply.is_closed();
                if late {
                    job.claim.advance(Claim::QUEUED, Claim::ABANDONED);
                } else if job.claim.advance(Claim::QUEUED, Claim::COMMITTING) {
                    self.rows.push(job.row);
                    self.jobs.push((job.reply, job.claim, job.unstored_ack));
                    return;
                }
                let _ = job.reply.send(Err(LogError::Abandoned));
            }
        }
    }
}

#[derive(Clone)]
pub struct EmbeddedLog {
    tx: mpsc::Sender<Work>,
    commit_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub max_batch: usize,
    pub commit_timeout: Duration,
    pub duplicate_window: Duration,
    /// How long a statement waits for a lock held by another process (SQLite's busy
    /// timeout, PostgreSQL's `lock_timeout`).
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
        let writer = store.log_writer(opts.busy_timeout, opts.commit_timeout, opts.max_batch)?;
        let handle = match writer {
            // Blocking rusqlite: a thread of its own, whose runtime has nothing else to run.
            LogWriter::Sqlite(writer) => {
                let opts = opts.clone();
                WriterHandle::Thread(
                    std::thread::Builder::new()
                        .name("event-log-writer".into())
                        .spawn(move || {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_time()
                                .build()
                                .expect("a current-thread runtime needs no resources");
                            rt.block_on(write_loop(writer, opts, metrics, rx))
                        })
                        .map_err(|e| StoreError::DataDir {
                            path: "the event-log writer thread".to_string(),
                            source: e,
                        })?,
                )
            }
            LogWriter::Postgres(pool) => WriterHandle::Task(tokio::spawn(write_loop(
                PgSink { pool },
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

    /// Appends one message; returns once it is durable, or once it is certain that the
    /// sender may be told it is not (see the module's invariants). `unstored_ack` is
    /// what the sender will hear in that case, for the record should the commit land late.
    pub async fn append(
        &self,
        row: NewMessage,
        unstored_ack: &'static str,
    ) -> Result<Appended, LogError> {
        let deadline = Instant::now() + self.commit_timeout;
        let ms = self.commit_timeout.as_millis() as u64;
        let claim = Claim::new();
        let (reply, mut wait) = oneshot::channel();
        let job = Job {
            row,
            reply,
            claim: claim.clone(),
            deadline,
            unstored_ack,
        };
        match tokio::time::timeout_at(deadline.into(), self.tx.send(Work::Append(job))).await {
            Err(_) => return Err(LogError::Timeout(ms)),
            Ok(Err(_)) => return Err(LogError::Closed),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline.into(), &mut wait).await {
            Ok(Ok(result)) => return result,
            Ok(Err(_)) => return Err(LogError::Closed),
            Err(_) => {}
        }
        // The deadline passed: settle with the writer who owns the outcome.
        if claim.advance(Claim::QUEUED, Claim::ABANDONED) {
            return Err(LogError::Timeout(ms));
        }
        if claim.advance(Claim::COMMITTING, Claim::GAVE_UP) {
            return Err(LogError::Timeout(ms));
        }
        match claim.get() {
            // Committed: the writer's answer is on its way.
            Claim::DONE => wait.await.unwrap_or(Err(LogError::Closed)),
            _ => Err(LogError::Timeout(ms)),
        }
    }

    /// Records that row `id`'s sender heard `code` ("none": nothing) instead of what the
    /// row says, e.g. because the ACK could not be written. Queued behind the appends.
    pub async fn correct_ack(&self, fix: AckFix) {
        if self.tx.send(Work::CorrectAck(fix)).await.is_err() {
            tracing::error!(id = fix.id, code = fix.code, "The event log writer has stopped; the stored ack_code of this message could not be corrected.");
        }
    }
}

/// Adds whatever work is already queued to `batch`, up to `max` appends.
fn fill(batch: &mut Batch, rx: &mut mpsc::Receiver<Work>, max: usize) {
    let now = Instant::now();
    while batch.rows.len() < max {
        match rx.try_recv() {
            Ok(w) => batch.push(w, now),
            Err(_) => break,
        }
    }
}

/// Answers every waiter of a committed (or failed) batch. A waiter that gave up while the
/// commit was in flight, or went away, gets a correction of the row's `ack_code` instead:
/// its sender was told the message was not stored.
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
            for ((reply, claim, unstored_ack), a) in batch.jobs.drain(..).zip(appended) {
                let answered =
                    claim.advance(Claim::COMMITTING, Claim::DONE) && reply.send(Ok(a)).is_ok();
                if !answered {
                    metrics
                        .ack_corrections
                        .with_label_values(&["late_commit"])
                        .inc();
                    batch.fixes.push(AckFix {
                        id: a.id,
                        code: unstored_ack,
                    });
                }
            }
        }
        Err(e) => {
            tracing::error!(batch = batch.rows.len(), error = %e, "Event log commit failed; every message in it was answered as not stored.");
            let err = LogError::Unavailable(e.to_string());
            for (reply, _, _) in batch.jobs.drain(..) {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
    batch.rows.clear();
}

/// Logs a late commit's correction: the ids are not PHI, and each one says which row's
/// sender will resend.
fn log_fixed(fixes: &[AckFix]) {
    for f in fixes {
        tracing::warn!(
            id = f.id,
            ack_code = f.code,
            "Message committed after its sender was told it was not stored (or its ACK could not be written); recorded as such. The sender's resend will be stored as a duplicate."
        );
    }
}

/// How long the writer waits before retrying corrections that could not be written.
const FIX_RETRY: Duration = Duration::from_millis(200);

/// Where a writer commits: the two backends behind one loop.
trait Sink {
    async fn append(
        &mut self,
        rows: &[NewMessage],
        dup_since_us: i64,
    ) -> Result<Vec<Appended>, StoreError>;
    async fn set_ack_codes(&mut self, fixes: &[AckFix]) -> Result<(), StoreError>;
}

/// SQLite: a blocking connection on the writer's own thread (its runtime has nothing
/// else to run, so blocking it is the point).
impl Sink for SqliteWriter {
    async fn append(
        &mut self,
        rows: &[NewMessage],
        dup_since_us: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        SqliteWriter::append(self, rows, dup_since_us)
    }
    async fn set_ack_codes(&mut self, fixes: &[AckFix]) -> Result<(), StoreError> {
        SqliteWriter::set_ack_codes(self, fixes)
    }
}

/// PostgreSQL: a connection of its own. There is no client-side timeout on a commit: a
/// dropped statement could still commit and its outcome would be unknown. The server
/// bounds the wait instead ([`Store::pg_writer_pool`]).
struct PgSink {
    pool: sqlx::PgPool,
}

impl Sink for PgSink {
    async fn append(
        &mut self,
        rows: &[NewMessage],
        dup_since_us: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        Store::append_messages_pg(&self.pool, rows, dup_since_us).await
    }
    async fn set_ack_codes(&mut self, fixes: &[AckFix]) -> Result<(), StoreError> {
        Store::set_ack_codes_pg(&self.pool, fixes).await
    }
}

async fn write_loop(
    mut sink: impl Sink,
    opts: EmbeddedOptions,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Work>,
) {
    let mut batch = Batch::new(opts.max_batch);
    loop {
        if batch.fixes.is_empty() {
            match rx.recv().await {
                Some(w) => batch.push(w, Instant::now()),
                None => break,
            }
        } else {
            // Corrections wait for storage to return: retry them without waiting for
            // new work.
            tokio::time::sleep(FIX_RETRY).await;
        }
        fill(&mut batch, &mut rx, opts.max_batch);
        if !batch.rows.is_empty() {
            let started = Instant::now();
            let since = now_us() - opts.duplicate_window.as_micros() as i64;
            let result = sink.append(&batch.rows, since).await;
            finish(&mut batch, result, started, &metrics);
        }
        if !batch.fixes.is_empty() {
            match sink.set_ack_codes(&batch.fixes).await {
                Ok(()) => log_fixed(&std::mem::take(&mut batch.fixes)),
                Err(e) => {
                    tracing::warn!(pending = batch.fixes.len(), error = %e, "Could not record corrected ACK codes yet; retrying.")
                }
            }
            if rx.is_closed() && rx.is_empty() && !batch.fixes.is_empty() {
                tracing::error!(fixes = ?batch.fixes, "The event log writer stopped with ACK-code corrections unwritten.");
                break;
            }
        }
    }
    tracing::debug!("Event log writer stopped.");
}

pub use crate::store::now_us;

#[cfg(test)]
mod tests {
    use super::*;

    /// One side wins each race, and the loser sees who won.
    #[test]
    fn claim_settles_each_race_once() {
        // The waiter gives up first: the writer may not take it.
        let c = Claim::new();
        assert!(c.advance(Claim::QUEUED, Claim::ABANDONED));
        assert!(!c.advance(Claim::QUEUED, Claim::COMMITTING));

        // The writer takes it first; the waiter gives up mid-commit; the writer then
        // cannot answer AA and must correct the row instead.
        let c = Claim::new();
        assert!(c.advance(Claim::QUEUED, Claim::COMMITTING));
        assert!(!c.advance(Claim::QUEUED, Claim::ABANDONED));
        assert!(c.advance(Claim::COMMITTING, Claim::GAVE_UP));
        assert!(!c.advance(Claim::COMMITTING, Claim::DONE));

        // The commit finishes first: the waiter cannot give up, and takes the answer.
        let c = Claim::new();
        assert!(c.advance(Claim::QUEUED, Claim::COMMITTING));
        assert!(c.advance(Claim::COMMITTING, Claim::DONE));
        assert!(!c.advance(Claim::COMMITTING, Claim::GAVE_UP));
        assert_eq!(c.get(), Claim::DONE);
    }

    fn row(id: &str) -> NewMessage {
        crate::store::test_message(id, "")
    }

    /// An append past its deadline is never taken into a commit, and its waiter hears so.
    #[test]
    fn appends_past_their_deadline_are_abandoned_before_the_commit() {
        let mut batch = Batch::new(4);
        let now = Instant::now();
        let mut waits = Vec::new();
        for (id, deadline) in [
            ("late", now - Duration::from_millis(1)),
            ("ok", now + Duration::from_secs(1)),
        ] {
            let (reply, wait) = oneshot::channel();
            let claim = Claim::new();
            batch.push(
                Work::Append(Job {
                    row: row(id),
                    reply,
                    claim: claim.clone(),
                    deadline,
                    unstored_ack: "none",
                }),
                now,
            );
            waits.push((claim, wait));
        }
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].control_id, "ok");
        let (late_claim, mut late_wait) = waits.remove(0);
        assert_eq!(late_claim.get(), Claim::ABANDONED);
        assert!(matches!(late_wait.try_recv(), Ok(Err(LogError::Abandoned))));
        assert_eq!(waits[0].0.get(), Claim::COMMITTING);
    }
}
