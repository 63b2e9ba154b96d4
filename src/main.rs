//! The `adt-router` command line.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use adt_router::app::{shutdown_signal, App};
use adt_router::config::Settings;
use adt_router::mllp::client::{split_messages, summarize_ack, MllpClient};
use adt_router::store::Store;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// HL7 v2 ADT router: MLLP in, durable event log, notifications to community providers.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML configuration file. Every key can also be set as ADT_ROUTER__SECTION__KEY.
    #[arg(long, short, global = true, env = "ADT_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MLLP listener and the HTTP endpoints until SIGTERM or ctrl-c.
    Serve,
    /// Send HL7 files over MLLP and print each ACK; exits 1 unless every answer is AA/CA.
    Send {
        /// Files with one message each, or several separated by blank lines or batch segments.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// HOST:PORT of the MLLP listener.
        #[arg(long)]
        to: String,
        /// How long to wait for each ACK.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// With MSH-15 NE or ER a receiver may answer nothing: how long silence must
        /// last before the message counts as sent.
        #[arg(long, default_value_t = 1000)]
        quiet_ms: u64,
    },
    /// Inspect stored inbound messages.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Load-test an MLLP listener: N messages over C connections, one in flight per
    /// connection, every ACK checked. Prints one JSON line.
    Bench {
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: String,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, default_value_t = 50_000)]
        n: u64,
        /// A message file to send instead of the built-in synthetic A01 (MSH-10 is replaced).
        #[arg(long)]
        message: Option<PathBuf>,
    },
    /// Re-drive events through the router, idempotently (records already stored change
    /// nothing). Kafka mode reads the topic up to its current end.
    Replay {
        /// Start at the first record at or after this time (RFC 3339).
        #[arg(
            long,
            conflicts_with = "from_offset",
            required_unless_present = "from_offset"
        )]
        since: Option<String>,
        /// Start at PARTITION:OFFSET.
        #[arg(long, value_name = "PARTITION:OFFSET")]
        from_offset: Option<String>,
    },
    /// Load and validate the configuration, print it, and exit.
    CheckConfig,
    /// NPPES provider files: import them, or generate synthetic ones for benchmarks.
    Nppes {
        #[command(subcommand)]
        command: NppesCommand,
    },
    /// The provider directory: look a provider up, correct its endpoints.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Patient rosters from practices, ACOs and payers.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
    /// Which providers a message's patient is attributed to, and why.
    Attribution {
        #[command(subcommand)]
        command: AttributionCommand,
    },
    /// Routing rules: check, explain one message, simulate candidate rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Send notifications again, with the same idempotency key (recorded as a resend):
    /// one by id, or a recipient's since a time.
    Resend {
        #[arg(long, conflicts_with_all = ["recipient", "since"])]
        notification: Option<i64>,
        #[arg(long, requires = "since")]
        recipient: Option<String>,
        /// RFC 3339; with --recipient.
        #[arg(long)]
        since: Option<String>,
    },
    /// Run the router outside `serve`.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// The notifications the router wrote (the outbox).
    Notifications {
        #[command(subcommand)]
        command: NotificationsCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validates a rules directory (default: routing.rules_dir); errors name file:line.
    Check { dir: Option<PathBuf> },
    /// For one HL7 message file: the encounter transition, the rules that fired, the
    /// recipients, suppressions and why. Reads the current state; writes nothing.
    Explain {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = JsonFormat::Json)]
        format: JsonFormat,
        /// Rules to use instead of routing.rules_dir.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Replays stored messages against candidate rules and the current ones, and prints
    /// the notifications gained and lost per recipient. Sends nothing, writes nothing.
    Simulate {
        /// From this time (RFC 3339, received time).
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        /// The candidate rules directory.
        #[arg(long)]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Routes every stored message not routed yet, then exits; prints the count and the
    /// rate (the routing benchmark: event log to outbox).
    Drain,
}

#[derive(Subcommand)]
enum NotificationsCommand {
    /// One JSON object per notification, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum NppesCommand {
    /// Import CMS NPPES files (npidata_pfile, endpoint_pfile). Atomic: a failed import
    /// leaves the directory as it was. `-` reads standard input.
    Import {
        #[arg(long, required_unless_present = "endpoints")]
        npidata: Option<PathBuf>,
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// A weekly file: upsert, apply deactivations, and replace the endpoint sets of
        /// the NPIs it lists. Without it the files replace the directory (monthly).
        #[arg(long)]
        incremental: bool,
        /// Fail when a file has more bad rows than this (default: directory.max_bad_rows).
        #[arg(long)]
        max_bad_rows: Option<u64>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Write realistic synthetic NPPES files (real layout, valid NPIs, no real people).
    Synth {
        #[arg(long, default_value_t = 100_000)]
        providers: u64,
        #[arg(long, default_value_t = 10_000)]
        endpoints: u64,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// A provider, every endpoint with its source and date, and which one would be used.
    Show {
        npi: String,
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// Add (or with --remove, delete) a local endpoint override; overrides win over NPPES.
    /// `--file F` loads many: CSV with npi,type,endpoint[,secret][,preferred].
    Override {
        #[arg(long, required_unless_present = "file")]
        npi: Option<String>,
        /// DIRECT, FHIR or REST.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        /// Per-endpoint secret (webhook signing).
        #[arg(long)]
        secret: Option<String>,
        /// Use this endpoint before any other for this NPI.
        #[arg(long)]
        preferred: bool,
        /// Remove this NPI's overrides (only the one with --endpoint, if given).
        #[arg(long, conflicts_with_all = ["kind", "secret", "preferred", "file"])]
        remove: bool,
        #[arg(long, conflicts_with_all = ["npi", "kind", "endpoint", "secret", "preferred"])]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RosterCommand {
    /// Load a roster CSV. Every row is checked first; a bad file changes nothing.
    Import {
        file: PathBuf,
        /// Who the roster comes from (a practice, ACO or payer).
        #[arg(long)]
        source: String,
        /// Replace this source's previous roster instead of upserting into it.
        #[arg(long)]
        replace: bool,
    },
    /// Write a synthetic roster for benchmarks (no real people).
    Synth {
        #[arg(long, default_value_t = 100_000)]
        patients: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum AttributionCommand {
    /// For one HL7 message file: candidate patients, attributed providers with
    /// provenance and match scores, and the endpoint each would get.
    Explain {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = JsonFormat::Json)]
        format: JsonFormat,
    },
    /// Attribution lookup latency over patients taken from the loaded rosters.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        samples: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShowFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum JsonFormat {
    Json,
}

#[derive(Subcommand)]
enum MessagesCommand {
    /// One JSON object per stored inbound message, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Only messages received at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Include the message text (PHI). Off by default.
        #[arg(long)]
        with_body: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
}

/// mimalloc advises transparent huge pages for its arenas, so every fresh 2 MiB region
/// is zeroed whole, in one stall, on its first touch: 8-9% of a routing drain's CPU was
/// the kernel clearing pages, and the drain ran ~6% faster without them (README,
/// Benchmarks). Turned off for this process, as Redis and MongoDB advise, unless
/// mimalloc's own switch `MIMALLOC_ALLOW_THP` says otherwise.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag on this process.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    disable_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ADT_ROUTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            for (what, path, mode) in settings.exposed_secret_files(cli.config.as_deref()) {
                tracing::warn!(
                    file = %path,
                    mode = %format!("{mode:o}"),
                    "{what} can be read by any user on this host, and it holds secrets: chmod 600 (or 640 with a dedicated group)."
                );
            }
            let app = App::build(settings).await?;
            let line = app.describe();
            println!("{line}");
            tracing::info!("{line}");
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            files,
            to,
            timeout_secs,
            quiet_ms,
        } => {
            send(
                &files,
                &to,
                Duration::from_secs(timeout_secs),
                Duration::from_millis(quiet_ms),
            )
            .await
        }
        Command::Messages {
            command:
                MessagesCommand::Export {
                    format: Format::Jsonl,
                    since,
                    with_body,
                },
        } => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            export(&settings, since.as_deref(), with_body).await
        }
        Command::Bench {
            to,
            conns,
            n,
            message,
        } => bench(&to, conns, n, message).await,
        Command::Replay { since, from_offset } => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            replay(&settings, since.as_deref(), from_offset.as_deref()).await
        }
        Command::Nppes { command } => match command {
            NppesCommand::Import {
                npidata,
                endpoints,
                incremental,
                max_bad_rows,
                quiet,
            } => {
                let settings = load(&cli.config)?;
                cli::nppes_import(
                    &settings,
                    npidata,
                    endpoints,
                    incremental,
                    max_bad_rows,
                    quiet,
                )
                .await
            }
            NppesCommand::Synth {
                providers,
                endpoints,
                out_dir,
                seed,
            } => cli::nppes_synth(providers, endpoints, &out_dir, seed),
        },
        Command::Directory { command } => {
            let settings = load(&cli.config)?;
            match command {
                DirectoryCommand::Show { npi, format } => {
                    cli::directory_show(&settings, &npi, format == ShowFormat::Json).await
                }
                DirectoryCommand::Override {
                    npi,
                    kind,
                    endpoint,
                    secret,
                    preferred,
                    remove,
                    file,
                } => {
                    cli::directory_override(
                        &settings, npi, kind, endpoint, secret, preferred, remove, file,
                    )
                    .await
                }
            }
        }
        Command::Roster { command } => match command {
            RosterCommand::Import {
                file,
                source,
                replace,
            } => cli::roster_import(&load(&cli.config)?, file, source, replace).await,
            RosterCommand::Synth {
                patients,
                out,
                seed,
            } => cli::roster_synth(patients, &out, seed),
        },
        Command::Attribution { command } => {
            let settings = load(&cli.config)?;
            match command {
                AttributionCommand::Explain {
                    file,
                    format: JsonFormat::Json,
                } => cli::attribution_explain(&settings, &file).await,
                AttributionCommand::Bench { samples } => {
                    cli::attribution_bench(&settings, samples).await
                }
            }
        }
        Command::Rules { command } => {
            let settings = load(&cli.config)?;
            match command {
                RulesCommand::Check { dir } => cli::routing::rules_check(&settings, dir),
                RulesCommand::Explain {
                    file,
                    format: JsonFormat::Json,
                    rules,
                } => cli::routing::rules_explain(&settings, &file, rules).await,
                RulesCommand::Simulate {
                    since,
                    until,
                    rules,
                } => {
                    cli::routing::rules_simulate(&settings, &since, until.as_deref(), &rules).await
                }
            }
        }
        Command::Resend {
            notification,
            recipient,
            since,
        } => {
            cli::routing::resend(
                &load(&cli.config)?,
                notification,
                recipient,
                since.as_deref(),
            )
            .await
        }
        Command::Route {
            command: RouteCommand::Drain,
        } => cli::routing::route_drain(&load(&cli.config)?).await,
        Command::Notifications {
            command:
                NotificationsCommand::Export {
                    format: Format::Jsonl,
                },
        } => cli::routing::notifications_export(&load(&cli.config)?).await,
        Command::CheckConfig => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            println!("{}", settings_json(&settings));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(config: &Option<PathBuf>) -> anyhow::Result<Settings> {
    Settings::load(config.as_deref()).context("loading configuration")
}

async fn replay(
    settings: &Settings,
    since: Option<&str>,
    from_offset: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use adt_router::event_log::kafka::replay::{replay_kafka, From};
    let from = match (since, from_offset) {
        (Some(s), _) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--since '{s}' is not an RFC 3339 time"))?;
            From::Time((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        (None, Some(po)) => {
            let (p, o) = po
                .split_once(':')
                .context("--from-offset must be PARTITION:OFFSET")?;
            From::Offset {
                partition: p.parse().context("--from-offset: bad partition")?,
                offset: o.parse().context("--from-offset: bad offset")?,
            }
        }
        (None, None) => bail!("give --since or --from-offset"),
    };
    let store = Store::connect(&settings.store_options())
        .await
        .context("opening database")?;
    if !settings.kafka.enabled() {
        // The embedded log is the store itself: every message in it is already where the
        // router reads from, so there is nothing to re-drive until routing
        // keeps its own progress.
        let since_us = match from {
            From::Time(ms) => ms * 1000,
            From::Offset { .. } => bail!("--from-offset needs Kafka mode (kafka.brokers)"),
        };
        let n = store.count_since(since_us).await?;
        println!(
            "{}",
            serde_json::json!({"mode": "embedded", "messages_since": n, "redriven": 0,
            "note": "the embedded log is the store; nothing to re-drive until routing keeps its own progress"})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let processor = adt_router::event_log::kafka::RecordProcessor {
        store: store.clone(),
        rules: settings.parse_rules(),
        fallback: settings.fallback_charset(),
        duplicate_window: Duration::from_secs(settings.event_log.duplicate_window_hours * 3600),
        stored: None,
    };
    let summary = replay_kafka(&settings.kafka, processor, from).await?;
    println!("{}", serde_json::to_string(&summary)?);
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

fn settings_json(s: &Settings) -> String {
    // JSON keeps the section structure readable without a TOML serializer dependency.
    serde_json::to_string_pretty(s).unwrap_or_default()
}

async fn send(
    files: &[PathBuf],
    to: &str,
    timeout: Duration,
    quiet: Duration,
) -> anyhow::Result<ExitCode> {
    use adt_router::hl7::ack::AckEcho;
    use adt_router::hl7::{AckCondition, AckMode};
    let mut client = MllpClient::connect(to).await?;
    let mut all_ok = true;
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let msgs = split_messages(&bytes);
        if msgs.is_empty() {
            eprintln!("{}: no HL7 message found", f.display());
            all_ok = false;
        }
        for (i, m) in msgs.iter().enumerate() {
            let label = format!("{}#{}", f.display(), i + 1);
            let echo = AckEcho::recover(&String::from_utf8_lossy(m));
            // MSH-15 says whether an accept ACK must come (standards §2.4). With NE or ER
            // a receiver may stay silent, or answer anyway as adt-router does by default
            // (`mllp.accept_ack = "always"`): wait `quiet` for either.
            let (wait, silence_ok) = match echo.mode {
                AckMode::Enhanced {
                    accept: AckCondition::Never | AckCondition::ErrorOnly,
                    ..
                } => (quiet, true),
                _ => (timeout, false),
            };
            client.send_raw(&adt_router::mllp::codec::frame(m)).await?;
            let answer = match client.recv(wait).await {
                Ok(a) => Some(a),
                Err(adt_router::mllp::client::ClientError::Timeout(_)) if silence_ok => None,
                Err(e) => {
                    println!("{label}\t-\t{}\t{e}", echo.control_id);
                    all_ok = false;
                    client = MllpClient::connect(to).await?;
                    continue;
                }
            };
            match answer {
                Some(ack) => {
                    let s = summarize_ack(&ack);
                    println!("{label}\t{}\t{}\t{}", s.code, s.control_id, s.text);
                    if s.code != "AA" && s.code != "CA" {
                        all_ok = false;
                    }
                }
                None => println!(
                    "{label}\t-\t{}\tno accept ACK expected (MSH-15={})",
                    echo.control_id,
                    match echo.mode {
                        AckMode::Enhanced { accept, .. } => accept.code(),
                        AckMode::Original => "",
                    }
                ),
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn export(
    settings: &Settings,
    since: Option<&str>,
    with_body: bool,
) -> anyhow::Result<ExitCode> {
    let since_us = match since {
        Some(s) => cli::routing::parse_time("--since", s)?,
        None => i64::MIN,
    };
    let store = Store::connect(&settings.store_options())
        .await
        .context("opening database")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0i64;
    loop {
        let page = store.export_page(since_us, after, 1000, with_body).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for m in &page {
            let received_at =
                time::OffsetDateTime::from_unix_timestamp_nanos(m.received_at_us as i128 * 1000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
            let mut obj = serde_json::json!({
                "id": m.id,
                "control_id": m.control_id,
                "sending_application": m.sending_application,
                "sending_facility": m.sending_facility,
                "message_type": m.message_type,
                "trigger_event": m.trigger_event,
                "version": m.version,
                "charset": m.charset,
                "ack_code": m.ack_code,
                "status": m.status,
                "duplicate": m.duplicate,
                "control_id_collision": m.control_id_collision,
                "error": m.error,
                "received_at": received_at,
                "peer": m.peer,
                "sha256": m.sha256,
            });
            if let Some(raw) = &m.raw {
                let enc = encoding_rs::Encoding::for_label(m.charset.as_bytes())
                    .unwrap_or(encoding_rs::UTF_8);
                obj["body"] =
                    serde_json::Value::String(enc.decode_without_bom_handling(raw).0.into_owned());
            }
            writeln!(out, "{obj}")?;
        }
    }
    out.flush()?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// A synthetic A01 (no real person) of typical size, enhanced mode like most engines.
const BENCH_MESSAGE: &str = "MSH|^~\\&|EPIC|GENHOSP|ADTROUTER|STATE-HIE|20261128093000||ADT^A01^ADT_A01|CTRLID|P|2.5.1|||AL|NE\r\
EVN|A01|20261128093000|||USR123^TEST^USER\r\
PID|1||MRN000123^^^GENHOSP^MR||TESTPATIENT^ALPHA^Q^^^^L||19650412|M|||123 MAIN ST^^SPRINGFIELD^IL^62701^USA^H||^PRN^PH^^1^217^5550100|||M\r\
PD1|||SPRINGFIELD FAMILY PRACTICE^^1234^^^^^^^^NPI|1234567893^WELBY^MARCUS^^^DR^MD^^NPI^L^^^NPI\r\
PV1|1|I|4W^401^A^GENHOSP^^^^^4 WEST||||1234567893^HOUSE^GREGORY^^^DR^MD^^NPI^L^^^NPI|||MED||||7|||1234567893^HOUSE^GREGORY^^^DR^MD^^NPI^L^^^NPI|IN|V0001||||||||||||||||||||GENHOSP||ADM|||20261128092500\r\
PV2|||^CHEST PAIN\r\
DG1|1||R07.9^Chest pain, unspecified^I10|||A\r";

async fn bench(
    to: &str,
    conns: usize,
    n: u64,
    message: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let template = match message {
        Some(p) => String::from_utf8_lossy(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .replace('\n', "\r"),
        None => BENCH_MESSAGE.to_string(),
    };
    let msh_end = template.find('\r').unwrap_or(template.len());
    let fields: Vec<&str> = template[..msh_end].split('|').collect();
    if fields.len() < 10 {
        bail!("the bench message has no MSH-10");
    }
    let prefix = fields[..9].join("|") + "|";
    let suffix = "|".to_string()
        + &template[..msh_end]
            .split('|')
            .skip(10)
            .collect::<Vec<_>>()
            .join("|")
        + &template[msh_end..];
    let next = Arc::new(AtomicU64::new(0));
    let run_id = format!("B{:x}", std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, prefix, suffix, to, run_id) = (
            next.clone(),
            prefix.clone(),
            suffix.clone(),
            to.to_string(),
            run_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bad = 0u64;
            let mut client = MllpClient::connect(&to).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("{run_id}-{i}");
                let msg = format!("{prefix}{id}{suffix}");
                let t0 = Instant::now();
                let ack = client.send(msg.as_bytes(), Duration::from_secs(30)).await?;
                lat.push(t0.elapsed().as_secs_f64());
                let s = summarize_ack(&ack);
                if s.control_id != id || !(s.code == "AA" || s.code == "CA") {
                    bad += 1;
                }
            }
            anyhow::Ok((lat, bad))
        }));
    }
    let mut lat = Vec::new();
    let mut bad = 0;
    for t in tasks {
        let (l, b) = t.await??;
        lat.extend(l);
        bad += b;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|v| v * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({
            "to": to, "conns": conns, "sent": lat.len(), "not_accepted": bad,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "msgs_per_s": (lat.len() as f64 / secs).round(),
            "p50_ms": (pct(0.5) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
            "max_ms": (pct(1.0) * 1000.0).round() / 1000.0,
        })
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
