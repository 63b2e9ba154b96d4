//! Routing: from a stored ADT message to notifications in the outbox.
//!
//! For each message, in log order: parse the whole message ([`AdtEvent`]), feed the
//! encounter's state machine ([`encounter`]), and for each notifiable transition find
//! the candidate recipients ([`crate::attribution`]), let the rules ([`rules`]) select,
//! suppress or redact, pick a channel from the directory, and write the transitions,
//! one decision per candidate, and the outbox rows in one transaction. Retractions go
//! to exactly the recipients who were sent what they retract.
//!
//! Notification identity is (transition key, recipient): reprocessing a message, or a
//! sender's resend of it, can never create a second notification.

pub mod config;
pub mod encounter;
pub mod notification;
pub mod planner;
pub mod rules;

pub use planner::{Plan, Planner, RecipientDecision, Snapshot};

use crate::attribution::{self, AttributionPolicy};
use crate::hl7::adt::AdtEvent;
use crate::hl7::charset;
use crate::hl7::patient::PatientFacts;
use crate::store::routing::RoutingWrite;
use crate::store::{now_us, Store, StoreError, StoredMessage};
use encounter::{Encounter, EncounterConfig};
use planner::{attribution_key, encounter_key, encounter_row, transition_row};
use rules::RuleSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone)]
pub struct Router {
    pub store: Store,
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub attribution: AttributionPolicy,
    pub encounters: EncounterConfig,
    pub fallback: &'static encoding_rs::Encoding,
    /// UTC hour at which daily-digest notifications fall due.
    pub digest_hour_utc: u32,
    /// Messages per page (one transaction).
    pub page_size: i64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Woken when a message is stored; wakes the deliverer after routing.
    pub wake: crate::wake::Wakers,
    /// The page being committed while the next is planned ([`Router::step`]).
    pub pipeline: Arc<tokio::sync::Mutex<Pipeline>>,
}

/// The message decoded and parsed, or why it cannot be routed.
/// Guarded like ingest's parse: should the parser ever panic on a stored message, that
/// message is skipped with a reason instead of stopping the router (which would retry
/// the same page forever).
fn routable(raw: &[u8], fallback: &'static encoding_rs::Encoding) -> Result<AdtEvent, Skip> {
    let (text, _) = charset::decode(raw, fallback).map_err(|e| Skip::Charset(e.to_string()))?;
    std::panic::catch_unwind(|| AdtEvent::parse(&text))
        .unwrap_or_else(|_| {
            tracing::error!("The ADT parser panicked on a stored message; it is skipped. Please report this with the message's id.");
            Err(crate::hl7::Rejection {
                reason: "parser_panic",
                err: crate::hl7::ErrDetail::error(207, None, "internal error while parsing".into()),
            })
        })
        .map_err(|r| Skip::NotRoutable(r.err.diagnostic))
}

/// Why a stored message is not routed (recorded on its plan; `rules explain` shows it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("duplicate control id: routed when first received")]
    Duplicate,
    #[error("charset: {0}")]
    Charset(String),
    #[error("not routable: {0}")]
    NotRoutable(String),
}

impl Router {
    /// A router with its settings, how attribution decides, and the charset of
    /// messages that do not say (MSH-18).
    pub fn new(
        settings: &config::RoutingSettings,
        attribution: AttributionPolicy,
        fallback: &'static encoding_rs::Encoding,
        store: Store,
        rules: Arc<RwLock<Arc<RuleSet>>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Router {
        Router {
            store,
            rules,
            attribution,
            encounters: settings.encounter_config(),
            fallback,
            digest_hour_utc: settings.digest_hour_utc,
            page_size: settings.page_size.into(),
            metrics,
            wake: crate::wake::Wakers::default(),
            pipeline: Arc::default(),
        }
    }

    /// The planner with the rules as they are now (they reload while serving).
    pub fn planner(&self) -> Planner {
        let rules = self
            .rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        Planner {
            rules,
            encounters: self.encounters.clone(),
            digest_hour_utc: self.digest_hour_utc,
        }
    }

    /// Works out what one message changes, without writing anything: on top of the
    /// store, or of `snap` (what earlier messages did; `rules simulate`).
    pub async fn plan(
        &self,
        raw: &[u8],
        inbound_id: Option<i64>,
        now: i64,
        snap: Option<&mut Snapshot>,
    ) -> Result<Plan, StoreError> {
        let ev = match routable(raw, self.fallback) {
            Ok(ev) => ev,
            Err(skipped) => {
                return Ok(Plan {
                    skipped: Some(skipped.to_string()),
                    ..Plan::default()
                })
            }
        };
        let mut own = Snapshot {
            overlay: true,
            ..Snapshot::default()
        };
        let snap = snap.unwrap_or(&mut own);
        self.prefetch(&[&ev], snap).await?;
        Ok(self.planner().plan_event(snap, &ev, inbound_id, now))
    }

    /// Reads what planning `events` needs from the store into `sim`, in a few queries:
    /// each patient's attribution and, unless the snapshot starts empty, each
    /// encounter's state and who was sent what a cancel among them can retract.
    async fn prefetch(&self, events: &[&AdtEvent], sim: &mut Snapshot) -> Result<(), StoreError> {
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut patients: Vec<(String, PatientFacts)> = Vec::new();
        for ev in events {
            let Some((facility, visit, _)) = encounter_key(ev) else {
                continue;
            };
            let id = format!("{facility}|{visit}");
            if sim.overlay && !sim.encounters.contains_key(&id) && sim.fetched.insert(id) {
                keys.push((facility, visit));
            }
            let facts = PatientFacts::of(ev);
            let key = attribution_key(&facts);
            if !sim.attributions.contains_key(&key) && seen.insert(key.clone()) {
                patients.push((key, facts));
            }
        }
        for chunk in keys.chunks(500) {
            for (facility, visit, state) in self.store.load_encounters(chunk).await? {
                if let Ok(enc) = serde_json::from_str::<Encounter>(&state) {
                    sim.encounters.insert(format!("{facility}|{visit}"), enc);
                }
            }
        }
        if sim.overlay {
            // Only a cancel retracts (encounter::Encounter::step), and only a live
            // transition of its encounter.
            let mut retractable = Vec::new();
            for ev in events {
                if !matches!(ev.msh.trigger.as_str(), "A11" | "A12" | "A13") {
                    continue;
                }
                let Some((facility, visit, _)) = encounter_key(ev) else {
                    continue;
                };
                if let Some(enc) = sim.encounters.get(&format!("{facility}|{visit}")) {
                    retractable.extend(enc.live.values().map(|l| l.key.clone()));
                }
            }
            for key in retractable {
                if let std::collections::hash_map::Entry::Vacant(slot) = sim.stored_sent.entry(key)
                {
                    let sent = self.store.sent_to(slot.key()).await?;
                    slot.insert(sent);
                }
            }
        }
        let facts: Vec<&PatientFacts> = patients.iter().map(|(_, f)| f).collect();
        let found = attribution::attribute_many(
            &self.store,
            &facts,
            &self.attribution,
            attribution::Detail::ProvidersOnly,
        )
        .await?;
        for ((key, _), a) in patients.iter().zip(found) {
            sim.attributions.insert(key.clone(), a.providers.into());
        }
        Ok(())
    }

    /// Works out a page of stored messages in order, on top of `sim` (what earlier
    /// messages, of this page or of pages not yet committed, did): the plans and the
    /// one write that records them all and marks the messages routed.
    async fn plan_page(
        &self,
        msgs: &[StoredMessage],
        now: i64,
        sim: &mut Snapshot,
    ) -> Result<(Vec<Plan>, RoutingWrite), StoreError> {
        let parsed = self.parse_page(msgs);
        let events: Vec<&AdtEvent> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        self.prefetch(&events, sim).await?;
        let planner = self.planner();
        let mut plans = Vec::with_capacity(msgs.len());
        let mut all = RoutingWrite::default();
        // Encounters in the order the page first touched them.
        let mut touched: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (m, ev) in msgs.iter().zip(&parsed) {
            let mut plan = match ev {
                Ok(ev) => planner.plan_event(sim, ev, Some(m.id), now),
                Err(skipped) => Plan {
                    skipped: Some(skipped.to_string()),
                    ..Plan::default()
                },
            };
            let w = std::mem::take(&mut plan.write);
            if !plan.encounter.is_empty() && seen.insert(plan.encounter.clone()) {
                touched.push(plan.encounter.clone());
            }
            all.transitions.extend(w.transitions);
            all.decisions.extend(w.decisions);
            all.outbox.extend(w.outbox);
            all.merges.extend(w.merges);
            all.routed_inbound.push(m.id);
            plans.push(plan);
        }
        // Each encounter's row once, with its last state (stored once per page, not
        // serialised once per message).
        all.encounters = touched
            .iter()
            .filter_map(|id| sim.encounters.get(id))
            .map(encounter_row)
            .collect();
        Ok((plans, all))
    }

    /// Each message of a page parsed (duplicates are not routed), on this thread. The
    /// commit of the page before runs on another core meanwhile; parsing on threads of
    /// its own per page cost more than it saved (thread start-up, each thread's fresh
    /// allocator heap, and every parsed string freed across threads): 6 interleaved
    /// pairs, median 18,000 msgs/s against 14,350 and 1.73 s of CPU against 2.04 s.
    fn parse_page(&self, msgs: &[StoredMessage]) -> Vec<Result<AdtEvent, Skip>> {
        msgs.iter()
            .map(|m| match m.duplicate {
                true => Err(Skip::Duplicate),
                false => routable(m.raw.as_deref().unwrap_or_default(), self.fallback),
            })
            .collect()
    }

    /// Closes ED visits that have gone quiet ([`EncounterConfig::ed_timeout_us`]).
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.flush().await?;
        let now = now_us();
        let states = self
            .store
            .quiet_ed_encounters(now - self.encounters.ed_timeout_us, 500)
            .await?;
        let mut closed = 0;
        for s in states {
            let Ok(mut enc) = serde_json::from_str::<Encounter>(&s) else {
                continue;
            };
            let Some(t) = enc.sweep(&self.encounters, now) else {
                continue;
            };
            let w = RoutingWrite {
                encounters: vec![encounter_row(&enc)],
                transitions: vec![transition_row(&enc, &t, None, None)],
                ..RoutingWrite::default()
            };
            self.store.commit_routing(&w, now).await?;
            closed += 1;
        }
        Ok(closed)
    }

    /// The routing loop: routes stored messages not routed yet, oldest first, until
    /// `shutdown` fires. A database error is retried (the message is not skipped).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut last_sweep = std::time::Instant::now();
        let mut standby_logged = false;
        let _lease = loop {
            match self.store.router_lease().await {
                Ok(Some(l)) => break l,
                Ok(None) if !standby_logged => {
                    standby_logged = true;
                    tracing::info!("Another node is routing; this one stands by.");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "Could not take the routing lease."),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        };
        tracing::info!("Routing stored messages.");
        loop {
            if *shutdown.borrow() {
                return;
            }
            let progressed = match self.step().await {
                Ok(n) => {
                    if n > 0 {
                        self.wake.routed.notify_one();
                    }
                    n > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Routing failed; retrying the same message.");
                    false
                }
            };
            if last_sweep.elapsed() > Duration::from_secs(60) {
                last_sweep = std::time::Instant::now();
                match self.sweep().await {
                    Ok(n) if n > 0 => tracing::info!(closed = n, "Closed quiet ED visits."),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ED-timeout sweep failed."),
                }
            }
            if !progressed {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = self.wake.stored.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Routes the next page of messages; returns how many. The page's write goes to the
    /// database while the next page is planned (a second core's worth of work): it is
    /// planned on top of what the page in flight did, kept in memory until its commit
    /// is known. A page that returns 0 has also finished the write in flight.
    pub async fn step(&self) -> Result<usize, StoreError> {
        let mut pipe = self.pipeline.lock().await;
        let skip = pipe.inflight.as_ref().map(|f| f.ids);
        let started = std::time::Instant::now();
        let page = self.store.unrouted(self.page_size, skip).await?;
        if page.is_empty() {
            // Idle: everything is in the database; carry nothing into the next burst,
            // and hold no read snapshot open while nothing is routed.
            pipe.sim = Snapshot::default();
            self.store.release_reference();
            pipe.finish().await?;
            return Ok(0);
        }
        let now = now_us();
        pipe.sim.overlay = true;
        pipe.sim.write_only = true;
        // Attributions are worked out again each page (rosters change); encounters and
        // what was sent are carried over.
        pipe.sim.attributions.clear();
        let planned = self.plan_page(&page, now, &mut pipe.sim).await;
        let planned_at = std::time::Instant::now();
        // The page before must have committed for this one's plan to stand.
        let flushed = pipe.finish().await;
        let stage = |s: &str, secs: f64| {
            self.metrics
                .routing_page
                .with_label_values(&[s])
                .observe(secs)
        };
        stage("plan", (planned_at - started).as_secs_f64());
        stage("wait", planned_at.elapsed().as_secs_f64());
        let (plans, write) = match (planned, flushed) {
            (Ok(p), Ok(())) => p,
            (Err(e), _) | (_, Err(e)) => {
                pipe.sim = Snapshot::default();
                return Err(e);
            }
        };
        let ids = (
            page.first().map_or(0, |m| m.id),
            page.last().map_or(0, |m| m.id),
        );
        if pipe.sim.encounters.len() > CARRIED_ENCOUNTERS {
            // Bound the memory: commit this page in place and start afresh.
            pipe.sim = Snapshot::default();
            commit_page(&self.store, &self.metrics, &write, &plans, now).await?;
            self.wake.routed.notify_one();
            return Ok(page.len());
        }
        let (store, metrics, wake) = (self.store.clone(), self.metrics.clone(), self.wake.clone());
        pipe.inflight = Some(Inflight {
            ids,
            commit: tokio::spawn(async move {
                commit_page(&store, &metrics, &write, &plans, now).await?;
                wake.routed.notify_one();
                Ok(Box::new((write, plans)))
            }),
        });
        Ok(page.len())
    }

    /// Finishes the write in flight and forgets what was carried between pages (the
    /// ED-timeout sweep changes encounters behind the router's back).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut pipe = self.pipeline.lock().await;
        pipe.sim = Snapshot::default();
        pipe.finish().await
    }
}

/// A page's write, and the metrics once it is committed.
async fn commit_page(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    write: &RoutingWrite,
    plans: &[Plan],
    now: i64,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    store.commit_routing(write, now).await?;
    metrics
        .routing_page
        .with_label_values(&["commit"])
        .observe(started.elapsed().as_secs_f64());
    for plan in plans {
        let outcome = match plan.skipped {
            Some(_) => "skipped",
            None => "routed",
        };
        metrics.routed.with_label_values(&[outcome]).inc();
    }
    for o in &write.outbox {
        metrics
            .notifications_created
            .with_label_values(&[o.status.as_str()])
            .inc();
    }
    Ok(())
}

/// Pages planned but not yet known to be committed, and what they did.
#[derive(Default)]
pub struct Pipeline {
    sim: Snapshot,
    inflight: Option<Inflight>,
}

/// A committed page's rows, handed back to be freed (see [`Inflight::commit`]).
type Committed = Box<(RoutingWrite, Vec<Plan>)>;

/// A page being committed: its first and last message ids, and the commit.
struct Inflight {
    ids: (i64, i64),
    /// Hands the page's rows back once committed, to be freed by the thread that
    /// allocated them: freed on the commit's thread they cost it ~3% of the CPU in
    /// cross-thread frees, and the planner then had to collect the blocks back.
    commit: tokio::task::JoinHandle<Result<Committed, StoreError>>,
}

impl Pipeline {
    /// Waits for the page in flight, if any.
    async fn finish(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        match f.commit.await {
            Ok(r) => r.map(drop),
            Err(e) => Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "routing commit task failed: {e}"
            )))),
        }
    }
}

/// Encounters carried between pages before the overlay is dropped (memory bound).
const CARRIED_ENCOUNTERS: usize = 20_000;

/// What identifies the rules directory's content: names, sizes and modification times.
fn fingerprint(
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

/// Reloads the rules when the directory changes. An invalid set keeps the last good
/// one, says why (file:line) and counts it.
pub async fn watch_rules(
    dir: std::path::PathBuf,
    rules: Arc<RwLock<Arc<RuleSet>>>,
    every: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = fingerprint(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match rules::load_dir(&dir) {
            Ok(set) => {
                tracing::info!(rules = set.rules.len(), opt_outs = set.opt_outs.len(), dir = %dir.display(), "Routing rules reloaded.");
                metrics.rule_reloads.with_label_values(&["ok"]).inc();
                if let Ok(mut w) = rules.write() {
                    *w = Arc::new(set);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Routing rules are invalid; keeping the last good rules.");
                metrics.rule_reloads.with_label_values(&["invalid"]).inc();
            }
        }
    }
}
