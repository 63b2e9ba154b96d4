//! The command line, as clap reads it.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// HL7 v2 ADT router: MLLP in, durable event log, notifications to community providers.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file. Every key can also be set as ADT_ROUTER__SECTION__KEY.
    #[arg(long, short, global = true, env = "ADT_ROUTER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    #[cfg(feature = "tools")]
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
    /// NPPES provider files: import them (and, in a `--features tools` build, generate synthetic ones).
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
    #[cfg(feature = "tools")]
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
pub enum RulesCommand {
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

#[cfg(feature = "tools")]
#[derive(Subcommand)]
pub enum RouteCommand {
    /// Routes every stored message not routed yet, then exits; prints the count and the
    /// rate (the routing benchmark: event log to outbox).
    Drain,
}

#[derive(Subcommand)]
pub enum NotificationsCommand {
    /// One JSON object per notification, oldest first.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum NppesCommand {
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
    #[cfg(feature = "tools")]
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
pub enum DirectoryCommand {
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
pub enum RosterCommand {
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
    #[cfg(feature = "tools")]
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
pub enum AttributionCommand {
    /// For one HL7 message file: candidate patients, attributed providers with
    /// provenance and match scores, and the endpoint each would get.
    Explain {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = JsonFormat::Json)]
        format: JsonFormat,
    },
    #[cfg(feature = "tools")]
    /// Attribution lookup latency over patients taken from the loaded rosters.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        samples: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum JsonFormat {
    Json,
}

#[derive(Subcommand)]
pub enum MessagesCommand {
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
pub enum Format {
    Jsonl,
}
