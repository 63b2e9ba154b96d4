//! The deliverers: claim due notifications from the outbox, send them, record
//! every attempt, and settle each one as delivered, retried later, failed (permanent)
//! or dead (out of retries). REST webhooks ([`webhook`]) and Direct secure email
//! ([`direct`], with the MDN and DSN intake in [`intake`] and [`report`]); FHIR rows
//! stay pending until their sender lands.
//!
//! Retry policy: transient failures (connection errors, timeouts, HTTP 408, 429 and 5xx)
//! come back after an exponential backoff with full jitter (a random wait between zero
//! and `base * 2^attempt`, capped), or after the receiver's `Retry-After` when it gives
//! one, until the notification is older than `max_age` or has had `max_attempts`.
//! Other 4xx answers and unusable endpoints fail at once.

pub mod config;
pub mod direct;
pub mod intake;
pub mod report;
pub mod smart;
pub mod webhook;

use crate::directory::endpoint::{EndpointKind, EndpointPolicy};
use crate::metrics::Metrics;
use crate::store::delivery::{AttemptRow, Outgoing, Settle, SubscriptionChange};
use crate::store::outbox::Status;
use crate::store::{now_us, Store, StoreError};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[delivery]` retry settings.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_age: Duration,
    pub max_attempts: i32,
    pub timeout: Duration,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has it. `proof` is what is kept (status, body hash, time).
    Delivered { code: u16, proof: String },
    /// Direct: our HISP accepted it (SMTP 250); the MDNs decide the rest.
    Submitted { code: u16, proof: String },
    /// Worth trying again; `retry_after` when the receiver said when.
    Transient {
        code: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help.
    Permanent { code: Option<u16>, reason: String },
}

impl RetryPolicy {
    /// When to try again after `attempts` attempts, or `None` when out of retries.
    pub fn next_due(
        &self,
        attempts: i32,
        created_at_us: i64,
        now: i64,
        retry_after: Option<Duration>,
    ) -> Option<i64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let wait = retry_after.unwrap_or_else(|| {
            let exp = self
                .base
                .saturating_mul(2u32.saturating_pow(attempts.clamp(0, 30) as u32))
                .min(self.cap);
            exp.mul_f64(rand::thread_rng().gen::<f64>())
        });
        let due = now + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 2);
        let deadline =
            created_at_us + i64::try_from(self.max_age.as_micros()).unwrap_or(i64::MAX / 2);
        (due <= deadline).then_some(due)
    }
}

/// One endpoint, as this node sees it: requests in flight, and the circuit breaker.
#[derive(Debug, Default)]
struct EndpointState {
    inflight: usize,
    failures: u32,
    open_until: Option<Instant>,
}

/// Per-endpoint concurrency limit and circuit breaker, so that one dead practice
/// endpoint costs the others nothing: after `threshold` failures in a row (connection
/// errors, timeouts, 408/429/5xx) its circuit opens for `cooldown`, and its rows are not
/// even claimed meanwhile; then one try decides (success closes it, a failure reopens).
#[derive(Debug)]
pub struct Breakers {
    state: Mutex<HashMap<String, EndpointState>>,
    pub limit: usize,
    pub threshold: u32,
    pub cooldown: Duration,
}

/// Whether an endpoint may take one more request now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// At its concurrency limit: wait for a request to finish.
    Busy,
    /// Its circuit is open until then.
    Open(Instant),
}

impl Breakers {
    pub fn new(limit: usize, threshold: u32, cooldown: Duration) -> Self {
        Breakers {
            state: Mutex::new(HashMap::new()),
            limit: limit.max(1),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, EndpointState>) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Endpoints whose circuit is open: not to claim for now.
    pub fn open_list(&self) -> Vec<String> {
        let now = Instant::now();
        self.with(|m| {
            m.iter()
                .filter(|(_, s)| s.open_until.is_some_and(|t| t > now))
                .map(|(e, _)| e.clone())
                .collect()
        })
    }

    /// Takes a slot for `endpoint`, or says until when to wait.
    pub fn admit(&self, endpoint: &str) -> Admit {
        let now = Instant::now();
        self.with(|m| {
            let s = m.entry(endpoint.to_string()).or_default();
            if let Some(t) = s.open_until.filter(|t| *t > now) {
                return Admit::Open(t);
            }
            if s.inflight >= self.limit {
                return Admit::Busy;
            }
            s.inflight += 1;
            Admit::Go
        })
    }

    /// Gives the slot back. `reachable`: `Some(true)` answered (any status that is not
    /// a server failure), `Some(false)` failed (connection, timeout, 408/429/5xx).
    /// Returns true when this failure opened the circuit.
    pub fn release(&self, endpoint: &str, reachable: Option<bool>) -> bool {
        self.with(|m| {
            let s = m.entry(endpoint.to_string()).or_default();
            s.inflight = s.inflight.saturating_sub(1);
            match reachable {
                Some(true) => {
                    s.failures = 0;
                    s.open_until = None;
                    false
                }
                Some(false) => {
                    s.failures += 1;
                    if s.failures >= self.threshold {
                        let was_open = s.open_until.is_some();
                        s.open_until = Some(Instant::now() + self.cooldown);
                        !was_open
                    } else {
                        false
                    }
                }
                None => false,
            }
        })
    }
}

#[derive(Clone)]
pub struct Deliverer {
    pub store: Store,
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
    pub endpoints: EndpointPolicy,
    pub owner: String,
    pub metrics: Arc<Metrics>,
    /// Rows claimed per round.
    pub batch: i64,
    pub breakers: Arc<Breakers>,
    /// Direct, when `[direct]` names a HISP, and its MDN bookkeeping (timeouts).
    pub direct: Option<direct::DirectSender>,
    pub mdns: Option<Arc<direct::Mdns>>,
    /// Told when new notifications were routed.
    pub routed: Arc<tokio::sync::Notify>,
    /// The FHIR API's base URL (references in heartbeat bundles).
    pub fhir_base: String,
    /// SMART Backend Services clients, by endpoint prefix.
    pub smart: Arc<smart::SmartClients>,
    /// The settle writer (started by [`Deliverer::run`]).
    pub settler: Option<tokio::sync::mpsc::Sender<SettleRequest>>,
}

/// Claimed rows by endpoint, with when they were claimed.
type Waiting = HashMap<String, std::collections::VecDeque<(i64, Instant)>>;

/// A settled attempt on its way to the writer, and where to say it is written.
pub type SettleRequest = (
    Settle,
    tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
);

/// Writes settled attempts in groups: whatever has queued up while the last commit ran
/// goes into the next one, so many deliveries share one fsync (as the event log's group
/// commit does for inbound messages).
async fn settle_writer(store: Store, mut rx: tokio::sync::mpsc::Receiver<SettleRequest>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let (rows, waiters): (Vec<Settle>, Vec<_>) = batch.drain(..).unzip();
        match store.record_attempts(&rows).await {
            Ok(kept) => {
                for (w, k) in waiters.into_iter().zip(kept) {
                    let _ = w.send(Ok(k));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for w in waiters {
                    let _ = w.send(Err(StoreError::Db(sqlx::Error::Protocol(msg.clone()))));
                }
            }
        }
    }
}

impl Deliverer {
    /// Claims and delivers until `shutdown` fires. Up to `batch` notifications are in
    /// flight at once, each settled on its own: a receiver that hangs holds up only its
    /// own rows (until the request's time limit), never the others.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let writer = tokio::spawn(settle_writer(self.store.clone(), rx));
        self.settler = Some(tx);
        let mut inflight = tokio::task::JoinSet::new();
        // Claimed rows waiting for a free slot at their endpoint, so a finished request
        // is followed at once by the next without a claim in between. At most about the
        // endpoint's limit each: a claim takes no more of one endpoint, and skips those
        // that have that many waiting.
        let mut waiting: Waiting = HashMap::new();
        let mut last_expiry = Instant::now();
        loop {
            if let Some(m) = self
                .mdns
                .as_ref()
                .filter(|_| last_expiry.elapsed() >= Duration::from_secs(1))
            {
                if let Err(e) = m.expire().await {
                    tracing::warn!(error = %e, "Checking Direct MDN timeouts failed; retrying.");
                }
            }
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                if let Err(e) = self.fanout().await {
                    tracing::warn!(error = %e, "Numbering FHIR subscription events failed; retrying.");
                }
                if let Err(e) = self.heartbeats().await {
                    tracing::warn!(error = %e, "Queueing FHIR heartbeats failed; retrying.");
                }
            }
            if *shutdown.borrow() {
                // Unfinished sends are abandoned; their leases run out and they are sent
                // again (same idempotency key) by the next worker.
                inflight.shutdown().await;
                drop(self);
                let _ = writer.await;
                return;
            }
            while let Some(r) = inflight.try_join_next() {
                report(r);
            }
            self.dispatch(&mut waiting, &mut inflight).await;
            let queued: usize = waiting.values().map(|q| q.len()).sum();
            let room = self.batch - (inflight.len() + queued) as i64;
            let claimed = if room > 0 {
                let mut skip = self.breakers.open_list();
                skip.extend(
                    waiting
                        .iter()
                        .filter(|(_, q)| q.len() >= self.breakers.limit)
                        .map(|(e, _)| e.clone()),
                );
                match self.claim(room, &skip).await {
                    Ok(rows) => {
                        let n = rows.len();
                        let at = Instant::now();
                        for c in rows {
                            waiting.entry(c.endpoint).or_default().push_back((c.id, at));
                        }
                        self.dispatch(&mut waiting, &mut inflight).await;
                        n
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Claiming notifications failed; retrying.");
                        0
                    }
                }
            } else {
                0
            };
            if claimed == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = self.routed.notified() => {}
                    _ = shutdown.changed() => {}
                    Some(r) = inflight.join_next(), if !inflight.is_empty() => report(r),
                }
            }
        }
    }

    /// Starts the waiting rows whose endpoints have a free slot. Rows of an endpoint
    /// whose circuit opened go back to the outbox untried, due when it closes; so do
    /// rows that waited so long their lease could run out during the request.
    async fn dispatch(
        &self,
        waiting: &mut Waiting,
        inflight: &mut tokio::task::JoinSet<Result<(), StoreError>>,
    ) {
        let mut back = Vec::new();
        for (endpoint, q) in waiting.iter_mut() {
            while let Some(&(id, claimed)) = q.front() {
                if claimed.elapsed() > self.policy.timeout {
                    q.pop_front();
                    back.push((id, now_us()));
                    continue;
                }
                match self.breakers.admit(endpoint) {
                    Admit::Go => {
                        q.pop_front();
                        let me = self.clone();
                        let endpoint = endpoint.clone();
                        inflight.spawn(async move { me.deliver(id, &endpoint).await });
                    }
                    Admit::Busy => break,
                    Admit::Open(until) => {
                        let wait = until.saturating_duration_since(Instant::now());
                        let due = now_us() + i64::try_from(wait.as_micros()).unwrap_or(0);
                        back.extend(q.drain(..).map(|(id, _)| (id, due)));
                    }
                }
            }
        }
        waiting.retain(|_, q| !q.is_empty());
        if !back.is_empty() {
            if let Err(e) = self.store.release_claims(&back, &self.owner).await {
                tracing::warn!(error = %e, "Handing back claimed notifications failed; their leases will run out.");
            }
        }
    }

    /// Leases up to `limit` due notifications of the channels this deliverer sends.
    async fn claim(
        &self,
        limit: i64,
        skip: &[String],
    ) -> Result<Vec<crate::store::outbox::Claimed>, StoreError> {
        let now = now_us();
        // The lease outlives the request's time limit, so no one else takes it meanwhile.
        let lease =
            now + i64::try_from((self.policy.timeout * 2).as_micros()).unwrap_or(60_000_000);
        let channels: &[&str] = if self.direct.is_some() {
            &["REST", "DIRECT", "FHIR"]
        } else {
            &["REST", "FHIR"]
        };
        self.store
            .claim_due_on(
                &self.owner,
                now,
                lease,
                limit,
                self.breakers.limit as i64,
                channels,
                skip,
            )
            .await
    }

    /// Sends one claimed row; its endpoint's slot was taken by [`Self::dispatch`] and is
    /// given back here whatever happens.
    async fn deliver(&self, id: i64, endpoint: &str) -> Result<(), StoreError> {
        let n = match self.store.outgoing(id).await {
            Ok(Some(n)) => n,
            other => {
                self.breakers.release(endpoint, None);
                return other.map(|_| ());
            }
        };
        let started = now_us();
        let clock = std::time::Instant::now();
        let (outcome, request_sha256) = match n.channel {
            EndpointKind::Rest | EndpointKind::Fhir => {
                let auth = self.smart.for_endpoint(&n.endpoint);
                webhook::send(&self.http, &n, self.endpoints, self.policy.timeout, auth).await
            }
            EndpointKind::Direct => match &self.direct {
                Some(d) => d.send(&n).await,
                None => (
                    Outcome::Transient {
                        code: None,
                        reason: "Direct is not configured".into(),
                        retry_after: None,
                    },
                    String::new(),
                ),
            },
            other => (
                Outcome::Permanent {
                    code: None,
                    reason: format!("channel {other} has no sender yet"),
                },
                String::new(),
            ),
        };
        let latency_us = i64::try_from(clock.elapsed().as_micros()).unwrap_or(i64::MAX);
        let reachable = match &outcome {
            Outcome::Delivered { .. } | Outcome::Submitted { .. } => Some(true),
            Outcome::Transient { .. } => Some(false),
            Outcome::Permanent { code: Some(_), .. } => Some(true),
            Outcome::Permanent { code: None, .. } => None,
        };
        if self.breakers.release(&n.endpoint, reachable) {
            self.metrics.delivery_circuit_opens.inc();
            tracing::warn!(
                notification = n.id,
                endpoint_hash = %crate::store::key_hash(&n.endpoint),
                cooldown_s = self.breakers.cooldown.as_secs(),
                "Endpoint keeps failing: circuit open, its notifications wait."
            );
        }
        self.settle(&n, outcome, request_sha256, started, latency_us)
            .await
    }

    /// Tells FHIR subscriptions of the transitions routed since the last round: each
    /// matching event numbered for its subscription and queued, with the cursor, in one
    /// transaction (routing commits transitions in id order, one node at a time, so
    /// the cursor never passes one that is not yet visible).
    async fn fanout(&self) -> Result<(), StoreError> {
        const PAGE: i64 = 500;
        loop {
            let subs = self.store.counting_subscriptions().await?;
            if subs.is_empty() {
                // Nobody counts events: nothing to read per transition, just move on.
                return self.store.fhir_skip_to_latest().await;
            }
            let (cursor, ts) = self.store.fhir_pending(PAGE).await?;
            let Some(last) = ts.last() else {
                return Ok(());
            };
            let matches: Vec<_> = ts
                .iter()
                .flat_map(|t| {
                    subs.iter()
                        .filter(|s| crate::fhir::event::matches(&self.fhir_base, s, t))
                        .map(move |s| (s, t))
                })
                .collect();
            let now = now_us();
            let at = crate::directory::rfc3339_us(now);
            let moved = self
                .store
                .fhir_fanout(
                    cursor,
                    last.id,
                    &matches,
                    |s, t, n| crate::fhir::event::build(&self.fhir_base, s, t, n, &at),
                    now,
                )
                .await?;
            if moved && !matches.is_empty() {
                tracing::info!(events = matches.len(), "FHIR subscription events queued.");
            }
            if !moved || (ts.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Queues a heartbeat for each active subscription whose period has passed since
    /// its last notification.
    async fn heartbeats(&self) -> Result<(), StoreError> {
        let now = now_us();
        for sub in self.store.heartbeats_due(now).await? {
            let (key, bundle) =
                crate::fhir::event::status_only(&self.fhir_base, &sub, "heartbeat", now);
            self.store
                .enqueue_fhir(&sub, "heartbeat", &key, &bundle, now)
                .await?;
        }
        Ok(())
    }

    /// What a FHIR notification's answer does to its subscription: the handshake's 2xx
    /// makes it active; a permanent refusal of any notification, or running out of
    /// retries, puts it in error with a fixed reason (the IG's lifecycle; the subscriber
    /// asks for reactivation). Applied with the settle, only if the lease still holds.
    fn subscription_change(
        n: &Outgoing,
        label: &str,
        code: Option<u16>,
    ) -> Option<SubscriptionChange> {
        let id = n.subscription_id.clone()?;
        let (status, error) = match label {
            "delivered" if n.kind.as_deref() == Some("handshake") => ("active", None),
            "failed" => ("error", Some(subscriber_error(code, false))),
            "dead" => ("error", Some(subscriber_error(code, true))),
            _ => return None,
        };
        Some(SubscriptionChange { id, status, error })
    }

    async fn settle(
        &self,
        n: &Outgoing,
        outcome: Outcome,
        request_sha256: String,
        started: i64,
        latency_us: i64,
    ) -> Result<(), StoreError> {
        let now = now_us();
        let (label, code, text, status, due, proof) = match &outcome {
            Outcome::Delivered { code, proof } => (
                "delivered",
                Some(*code),
                String::new(),
                Status::Delivered,
                now,
                Some(proof.clone()),
            ),
            Outcome::Submitted { code, proof } => (
                "submitted",
                Some(*code),
                String::new(),
                Status::Submitted,
                now + self.direct.as_ref().map_or(3_600_000_000, |d| {
                    i64::try_from(d.processed_timeout.as_micros()).unwrap_or(i64::MAX / 4)
                }),
                Some(proof.clone()),
            ),
            Outcome::Transient {
                code,
                reason,
                retry_after,
            } => match self
                .policy
                .next_due(n.attempts, n.created_at_us, now, *retry_after)
            {
                Some(due) => ("retry", *code, reason.clone(), Status::Pending, due, None),
                None => (
                    "dead",
                    *code,
                    format!("{reason}; out of retries after {} attempts", n.attempts),
                    Status::Dead,
                    now,
                    None,
                ),
            },
            Outcome::Permanent { code, reason } => {
                ("failed", *code, reason.clone(), Status::Failed, now, None)
            }
        };
        self.metrics
            .delivery_attempts
            .with_label_values(&[n.channel.as_str(), label])
            .inc();
        if !matches!(label, "delivered" | "submitted") {
            tracing::info!(
                notification = n.id,
                channel = %n.channel,
                outcome = label,
                code,
                "Delivery attempt did not deliver."
            );
        }
        let attempt = AttemptRow {
            outbox_id: n.id,
            attempt: n.attempts,
            started_at_us: started,
            channel: n.channel,
            endpoint: n.endpoint.clone(),
            request_sha256,
            outcome: label.to_string(),
            response_code: code.map(i32::from),
            response_text: text.clone(),
            latency_us,
        };
        let settle = Settle {
            attempt,
            owner: self.owner.clone(),
            status,
            due_at_us: due,
            error: (!text.is_empty()).then_some(text),
            proof,
            subscription: Self::subscription_change(n, label, code),
        };
        let change = settle.subscription.clone();
        let kept = match &self.settler {
            Some(tx) => {
                let (done, wait) = tokio::sync::oneshot::channel();
                if tx.send((settle, done)).await.is_err() {
                    return Ok(()); // shutting down: the lease runs out, it is sent again
                }
                match wait.await {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                }
            }
            None => self.store.record_attempts(&[settle]).await?[0],
        };
        if !kept {
            tracing::warn!(
                notification = n.id,
                "The lease ran out before the attempt was recorded; another worker owns it now."
            );
        } else if let Some(c) = change {
            match c.status {
                "active" => {
                    tracing::info!(subscription = %c.id, "FHIR Subscription handshake answered: active.")
                }
                _ => {
                    tracing::warn!(subscription = %c.id, outcome = label, "FHIR Subscription endpoint refused a notification or is unreachable for good: error.")
                }
            }
        }
        Ok(())
    }
}

fn report(r: Result<Result<(), StoreError>, tokio::task::JoinError>) {
    match r {
        Ok(Err(e)) => tracing::warn!(error = %e, "Recording a delivery failed."),
        Err(e) if !e.is_cancelled() => tracing::warn!(error = %e, "A delivery task failed."),
        _ => {}
    }
}

/// What a subscriber may read of a failure (`Subscription.error`, `$status`): the HTTP
/// status and a fixed reason, never the endpoint's response body, which stays in the
/// attempt log for the operator (an endpoint's answer could carry anything).
fn subscriber_error(code: Option<u16>, out_of_retries: bool) -> String {
    match (code, out_of_retries) {
        (Some(c), false) => {
            format!("the endpoint answered HTTP {c}; the notification was not accepted")
        }
        (None, false) => {
            "the endpoint was refused before any answer (address, scheme or TLS check)".into()
        }
        (Some(c), true) => format!("out of retries: the last answer was HTTP {c}"),
        (None, true) => "out of retries: no answer (the connection failed or timed out)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_limits_and_closes() {
        let b = Breakers::new(1, 2, Duration::from_secs(60));
        assert_eq!(b.admit("a"), Admit::Go);
        assert_eq!(b.admit("a"), Admit::Busy, "limit 1");
        assert!(b.open_list().is_empty(), "busy is not open");
        assert!(!b.release("a", Some(false)));
        assert!(b.open_list().is_empty());
        assert_eq!(b.admit("a"), Admit::Go);
        assert!(
            b.release("a", Some(false)),
            "the second failure in a row opens it"
        );
        assert_eq!(b.open_list(), ["a"]);
        assert!(matches!(b.admit("a"), Admit::Open(_)));
        assert_eq!(b.admit("b"), Admit::Go, "other endpoints are not affected");
        // An answer (even a 4xx) closes it.
        b.release("a", Some(true));
        assert_eq!(b.admit("a"), Admit::Go);
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            max_attempts: 5,
            timeout: Duration::from_secs(10),
        };
        for attempts in 0..5 {
            let due = p.next_due(attempts, 0, 0, None).unwrap();
            let bound = 1_000_000i64 << attempts;
            assert!(
                (0..=bound.min(60_000_000)).contains(&due),
                "{attempts}: {due}"
            );
        }
        assert_eq!(p.next_due(5, 0, 0, None), None);
        assert_eq!(
            p.next_due(1, 0, 0, Some(Duration::from_secs(7))),
            Some(7_000_000)
        );
        // Past the maximum age: dead.
        assert_eq!(
            p.next_due(1, 0, 3_600_000_000, Some(Duration::from_secs(1))),
            None
        );
    }
}
