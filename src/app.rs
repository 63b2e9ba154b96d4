//! Wiring: settings in, bound ports out. `App::build` connects the store, starts the event
//! log writer and binds both listeners (port 0 works, for tests); `run_until_stopped`
//! serves until the stop future resolves, then drains in order: MLLP connections first
//! (their ACKs need the log), then the log writer, then the database.

use crate::config::Settings;
use crate::event_log::embedded::{EmbeddedLog, EmbeddedOptions, WriterHandle};
use crate::event_log::kafka::KafkaLog;
use crate::event_log::kafka::RecordProcessor;
use crate::event_log::EventLog;
use crate::http::{router, HttpState};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::mllp::listener::{self, ListenerOptions};
use crate::store::Store;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct App {
    pub mllp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    settings: Settings,
    store: Store,
    metrics: Arc<Metrics>,
    ingest: Arc<Ingest>,
    log_writer: Option<WriterHandle>,
    kafka: Option<KafkaLog>,
    mllp_listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http_listener: TcpListener,
    /// Where the HISP delivers Direct MDNs and DSNs (`direct.inbound_listen`).
    direct_intake: Option<TcpListener>,
    direct: Option<crate::deliver::direct::DirectSender>,
    /// STARTTLS for the report intake (`direct.inbound_tls_cert`).
    intake_tls: Option<tokio_rustls::TlsAcceptor>,
    smart: Arc<crate::deliver::smart::SmartClients>,
    wakers: crate::wake::Wakers,
    event_log: &'static str,
    rules: Arc<std::sync::RwLock<Arc<crate::routing::rules::RuleSet>>>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::with_label_cap(settings.metrics.max_label_values));
        let rules_dir = Path::new(&settings.routing.rules_dir);
        let rules = if rules_dir.is_dir() {
            let set = crate::routing::rules::load_dir(rules_dir).context(
                "routing rules are invalid (fix the file, or check with `adt-router rules check`)",
            )?;
            metrics.rule_reloads.with_label_values(&["ok"]).inc();
            set
        } else {
            tracing::warn!(dir = %rules_dir.display(), "No routing-rules directory: nothing will be notified until one appears.");
            crate::routing::rules::RuleSet::default()
        };
        let rules = Arc::new(std::sync::RwLock::new(Arc::new(rules)));
        let store = Store::connect(&settings.store_options())
            .await
            .with_context(|| format!("opening database {}", settings.database.url))?;
        if let Some(v) = store.asynchronous_commit().await? {
            if settings.database.allow_asynchronous_commit {
                tracing::warn!(synchronous_commit = %v, "PostgreSQL commits are asynchronous: an acknowledged message can be lost in a database crash (database.allow_asynchronous_commit = true).");
            } else {
                anyhow::bail!("PostgreSQL has synchronous_commit = {v} for this database: a commit returns before it is durable, so an AA could name a message a crash loses. Set it to on (ALTER DATABASE ... SET synchronous_commit = on), or set database.allow_asynchronous_commit = true to accept the risk");
            }
        }
        let (log, log_writer, kafka) = if settings.kafka.enabled() {
            let k = KafkaLog::connect(&settings.kafka, metrics.clone())
                .await
                .with_context(|| format!("connecting to Kafka at {}", settings.kafka.brokers))?;
            (EventLog::Kafka(k.clone()), None, Some(k))
        } else {
            let (embedded, writer) = EmbeddedLog::start(
                &store,
                EmbeddedOptions {
                    max_batch: settings.event_log.max_batch,
                    commit_timeout: Duration::from_millis(settings.event_log.commit_timeout_ms),
                    duplicate_window: Duration::from_secs(
                        settings.event_log.duplicate_window_hours * 3600,
                    ),
                    busy_timeout: Duration::from_millis(settings.database.busy_timeout_ms),
                },
                metrics.clone(),
            )
            .context("starting the event log writer")?;
            (EventLog::Embedded(embedded), Some(writer), None)
        };
        let event_log = log.name();
        let wakers = crate::wake::Wakers::default();
        let mut ingest = Ingest::new(
            log,
            store.clone(),
            settings.parse_rules(),
            settings.fallback_charset(),
            crate::ingest::AnswerPolicy {
                accept_ack: settings.mllp.accept_ack,
                on_storage_failure: settings.mllp.on_storage_failure,
            },
            metrics.clone(),
        );
        // The embedded log is the store: the router hears of each commit. In Kafka mode the
        // listener stores nothing; the consumer says when records reach the database.
        if kafka.is_none() {
            ingest.stored = Some(wakers.stored.clone());
        }
        let ingest = Arc::new(ingest);
        let m = &settings.mllp;
        let tls = if m.tls_cert.is_empty() {
            None
        } else {
            Some(
                crate::mllp::tls::acceptor(
                    &m.tls_cert,
                    &m.tls_key,
                    Some(m.tls_client_ca.as_str()).filter(|c| !c.is_empty()),
                )
                .context("setting up MLLP TLS")?,
            )
        };
        let mllp_listener = TcpListener::bind(&settings.mllp.listen)
            .await
            .with_context(|| format!("binding MLLP listener on {}", settings.mllp.listen))?;
        let http_listener = TcpListener::bind(&settings.http.listen)
            .await
            .with_context(|| format!("binding HTTP listener on {}", settings.http.listen))?;
        let smart = Arc::new(
            crate::deliver::smart::SmartClients::load(
                &settings.delivery.smart,
                Some(metrics.smart_tokens.clone()),
            )
            .context("loading [[delivery.smart]]")?,
        );
        // The Message-ID nonce key, shared by every node through the store.
        let direct_secret = if settings.direct.smtp_url.is_empty() {
            Vec::new()
        } else {
            store
                .secret(crate::deliver::direct::MessageIds::SECRET_NAME)
                .await
                .context("reading the Direct Message-ID secret")?
        };
        let direct = crate::deliver::direct::DirectSender::new(
            &settings.direct,
            Duration::from_millis(settings.delivery.timeout_ms.max(1)),
            direct_secret,
        )
        .context("setting up Direct")?;
        let d = &settings.direct;
        let intake_tls = if d.inbound_tls_cert.is_empty() {
            None
        } else {
            Some(
                crate::mllp::tls::acceptor(&d.inbound_tls_cert, &d.inbound_tls_key, None)
                    .context("setting up STARTTLS for the Direct report intake")?,
            )
        };
        let direct_intake = if settings.direct.inbound_listen.is_empty() {
            None
        } else {
            Some(
                TcpListener::bind(&settings.direct.inbound_listen)
                    .await
                    .with_context(|| {
                        format!(
                            "binding the Direct report intake on {}",
                            settings.direct.inbound_listen
                        )
                    })?,
            )
        };
        Ok(App {
            mllp_addr: mllp_listener.local_addr()?,
            http_addr: http_listener.local_addr()?,
            settings,
            store,
            metrics,
            ingest,
            log_writer,
            kafka,
            mllp_listener,
            http_listener,
            direct_intake,
            intake_tls,
            direct,
            smart,
            wakers,
            tls,
            event_log,
            rules,
        })
    }

    /// `fhir.base_url`, or `http://<bound HTTP address>/fhir`.
    fn fhir_base(&self) -> String {
        if self.settings.fhir.base_url.is_empty() {
            format!("http://{}/fhir", self.http_addr)
        } else {
            self.settings
                .fhir
                .base_url
                .trim_end_matches('/')
                .to_string()
        }
    }

    pub fn describe(&self) -> String {
        let log = match &self.kafka {
            Some(_) => format!(
                "kafka {} topic {}{}",
                self.settings.kafka.brokers,
                self.settings.kafka.topic,
                if self.settings.kafka.consume {
                    format!(", router in group {}", self.settings.kafka.group)
                } else {
                    String::new()
                }
            ),
            None => self.event_log.to_string(),
        };
        let mllp = match (&self.tls, self.settings.mllp.tls_client_ca.is_empty()) {
            (None, _) => "MLLP",
            (Some(_), true) => "MLLP over TLS",
            (Some(_), false) => "MLLP over mutual TLS",
        };
        let direct = match (&self.direct, &self.direct_intake) {
            (None, _) => String::new(),
            (Some(_), intake) => format!(
                ", Direct via {}{}",
                self.settings.direct.smtp_url,
                intake
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| format!(" with report intake on {a}"))
                    .unwrap_or_else(|| " (no report intake: MDNs are not read)".into())
            ),
        };
        format!(
            "adt-router listening: {mllp} on {}, HTTP on {} (database {}, event log {}{direct})",
            self.mllp_addr, self.http_addr, self.settings.database.url, log
        )
    }

    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (tx, rx) = watch::channel(false);
        let health = Arc::new(StageHealth::default());
        let fhir_base = self.fhir_base();
        let m = &self.settings.mllp;
        let opts = ListenerOptions {
            tls: self.tls.clone(),
            senders: crate::mllp::tls::Senders::new(&m.tls_senders),
            max_frame_bytes: m.max_frame_bytes,
            max_connections: m.max_connections,
            max_connections_per_peer: m.max_connections_per_peer,
            idle_timeout: Duration::from_secs(m.idle_timeout_secs),
            frame_timeout: Duration::from_secs(m.frame_timeout_secs),
            tcp_keepalive: Duration::from_secs(m.tcp_keepalive_secs.max(1)),
            drain_timeout: Duration::from_secs(m.drain_timeout_secs),
        };
        let mllp = stage(
            "mllp listener",
            listener::run(
                self.mllp_listener,
                self.ingest.clone(),
                self.metrics.clone(),
                opts,
                rx.clone(),
            ),
        );
        let router_task = match (&self.kafka, self.settings.kafka.consume) {
            (Some(_), true) => Some(stage(
                "kafka consumer",
                crate::event_log::kafka::consumer::run(
                    self.settings.kafka.clone(),
                    RecordProcessor {
                        store: self.store.clone(),
                        rules: self.settings.parse_rules(),
                        fallback: self.settings.fallback_charset(),
                        duplicate_window: Duration::from_secs(
                            self.settings.event_log.duplicate_window_hours * 3600,
                        ),
                        stored: Some(self.wakers.stored.clone()),
                    },
                    self.metrics.clone(),
                    rx.clone(),
                ),
            )),
            _ => None,
        };
        let routing = self.settings.routing.enabled.then(|| {
            let mut r = crate::routing::Router::new(
                &self.settings.routing,
                self.settings.attribution_policy(),
                self.settings.fallback_charset(),
                self.store.clone(),
                self.rules.clone(),
                self.metrics.clone(),
            );
            r.wake = self.wakers.clone();
            let watch = stage(
                "rules watcher",
                crate::routing::watch_rules(
                    self.settings.routing.rules_dir.clone().into(),
                    self.rules.clone(),
                    Duration::from_secs(self.settings.routing.reload_secs.max(1)),
                    self.metrics.clone(),
                    rx.clone(),
                ),
            );
            (stage("routing", r.run(rx.clone())), watch)
        });
        let mdns = self.direct.as_ref().map(|d| {
            Arc::new(crate::deliver::direct::Mdns::new(
                self.store.clone(),
                self.metrics.clone(),
                &self.settings.direct,
                d.ids.clone(),
            ))
        });
        let intake = match (self.direct_intake, &mdns) {
            (Some(l), Some(m)) => {
                let d = &self.settings.direct;
                let intake = crate::deliver::intake::Intake {
                    mdns: m.clone(),
                    metrics: self.metrics.clone(),
                    max_bytes: d.inbound_max_bytes,
                    // Checked by Settings::validate.
                    allow: d
                        .inbound_allow
                        .iter()
                        .filter_map(|c| c.parse().ok())
                        .collect(),
                    tls: self.intake_tls.clone(),
                    max_connections: d.inbound_max_connections,
                    session: Duration::from_secs(d.inbound_session_secs),
                };
                Some(stage(
                    "report intake",
                    crate::deliver::intake::serve(l, Arc::new(intake), rx.clone()),
                ))
            }
            _ => None,
        };
        let http = crate::deliver::webhook::client(self.settings.resolve_policy().endpoints)
            .context("building the HTTP client for webhooks and FHIR rest-hooks")?;
        let delivering = self.settings.delivery.enabled.then(|| {
            let d = crate::deliver::Deliverer {
                direct: self.direct.clone(),
                smart: self.smart.clone(),
                mdns: mdns.clone(),
                routed: self.wakers.routed.clone(),
                fhir_base: fhir_base.clone(),
                store: self.store.clone(),
                http: http.clone(),
                policy: self.settings.retry_policy(),
                endpoints: self.settings.resolve_policy().endpoints,
                owner: format!("{}-{}", std::process::id(), crate::store::now_us()),
                metrics: self.metrics.clone(),
                batch: self.settings.delivery.batch.max(1),
                breakers: Arc::new(crate::deliver::Breakers::new(
                    self.settings.delivery.per_endpoint_concurrency,
                    self.settings.delivery.breaker_failures,
                    Duration::from_secs(self.settings.delivery.breaker_cooldown_secs),
                )),
                settler: None,
            };
            stage("delivery", d.run(rx.clone()))
        });
        let state = HttpState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            event_log: self.event_log,
            kafka: self.kafka.clone(),
            tokens: Arc::new(crate::http::auth::Tokens::new(&self.settings.auth.tokens)),
            fhir_base,
            fhir: self.settings.fhir.clone(),
            endpoints: self.settings.resolve_policy().endpoints,
            smart: self.smart.clone(),
            stages: health.clone(),
            http: self.settings.http.clone(),
        };
        let limits = crate::http::serve::Limits {
            header_timeout: Duration::from_secs(self.settings.http.header_timeout_secs.max(1)),
            max_connections: self.settings.http.max_connections,
        };
        let http = stage(
            "http",
            crate::http::serve::serve(self.http_listener, router(state), limits, rx.clone()),
        );

        // Until asked to stop, watch every stage: one that ends on its own (an error, a
        // panic) turns /readyz red and stops the process with an error.
        let failed = {
            let mut running: Vec<(&'static str, IsFinished<'_>)> = vec![mllp.watch(), http.watch()];
            running.extend(router_task.iter().map(Stage::watch));
            running.extend(delivering.iter().map(Stage::watch));
            running.extend(intake.iter().map(Stage::watch));
            if let Some((r, w)) = &routing {
                running.extend([r.watch(), w.watch()]);
            }
            let watch = async {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    if let Some((name, _)) = running.iter().find(|(_, done)| done()) {
                        return *name;
                    }
                }
            };
            tokio::select! {
                _ = stop => None,
                name = watch => Some(name),
            }
        };
        if let Some(name) = failed {
            health.set(name);
            self.metrics.stage_failures.with_label_values(&[name]).inc();
            tracing::error!(
                stage = name,
                "A stage ended while the service was running; /readyz answers 503 and the process stops so it can be restarted."
            );
            tokio::time::sleep(STAGE_FAILURE_GRACE).await;
        }
        tracing::info!(
            "Shutdown requested: no new connections; answering frames already received."
        );
        let _ = tx.send(true);
        mllp.task.await.context("MLLP listener task")?;
        // The listener's connections held the only other handles to the log.
        drop(self.ingest);
        if let Some(w) = self.log_writer {
            w.join().await;
        }
        if let Some(k) = &self.kafka {
            k.flush();
        }
        if let Some(r) = router_task {
            r.task.await.context("router task")?.context("router")?;
        }
        if let Some(d) = delivering {
            d.task.await.context("delivery task")?;
        }
        if let Some(i) = intake {
            i.task.await.context("Direct report intake")?;
        }
        if let Some((r, w)) = routing {
            r.task.await.context("routing task")?;
            w.task.await.context("rules watcher")?;
        }
        http.task
            .await
            .context("HTTP task")?
            .context("HTTP server")?;
        self.store.close().await;
        if let Some(name) = failed {
            anyhow::bail!("the {name} stage ended while the service was running");
        }
        tracing::info!("Shutdown complete.");
        Ok(())
    }
}

/// Whether a stage has ended while the service was meant to be running: `/readyz`
/// answers 503 naming it, and `serve` shuts down and exits non-zero so systemd or
/// Kubernetes restarts the process. Every stage's work is durable, so a restart loses
/// nothing.
#[derive(Debug, Default)]
pub struct StageHealth {
    ended: std::sync::RwLock<Option<&'static str>>,
}

impl StageHealth {
    /// The stage that ended, if one did.
    pub fn ended(&self) -> Option<&'static str> {
        *self.ended.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, stage: &'static str) {
        let mut e = self.ended.write().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(stage);
    }
}

/// Whether a stage's task has finished.
type IsFinished<'a> = Box<dyn Fn() -> bool + Send + 'a>;

/// How long a failed stage's 503 is served before shutdown begins, so a probe or a
/// scrape sees it and the metric.
const STAGE_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// A running stage: its name (in the log, `/readyz` and the metric) and its task.
struct Stage<T> {
    name: &'static str,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Send> Stage<T> {
    /// The name, and whether the task has ended: what the stage watch polls.
    fn watch(&self) -> (&'static str, IsFinished<'_>) {
        (self.name, Box::new(|| self.task.is_finished()))
    }
}

/// Spawns a stage. Debug builds honour `ADT_ROUTER_FAILPOINT=<stage>`, which panics the
/// stage shortly after it starts: how the tests kill one task of the real binary.
fn stage<F>(name: &'static str, fut: F) -> Stage<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = tokio::spawn(async move {
        tokio::select! {
            out = fut => out,
            _ = failpoint(name) => unreachable!("a failpoint panics"),
        }
    });
    Stage { name, task }
}

async fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var("ADT_ROUTER_FAILPOINT").as_deref() == Ok(name) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        panic!("failpoint {name}");
    }
    std::future::pending::<()>().await
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
