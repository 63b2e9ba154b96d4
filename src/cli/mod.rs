//! The command line: `main.rs` starts the runtime and hands over to [`run`]. One file
//! per noun; each command opens what it needs, does one thing, prints JSON (or a short
//! text) on stdout, and reports failures on stderr with a non-zero exit.

mod args;
mod attribution;
#[cfg(feature = "tools")]
mod bench;
mod directory;
mod messages;
mod roster;
pub mod routing;

pub use args::*;

use adt_router::app::{shutdown_signal, App};
use adt_router::config::Settings;
use adt_router::store::bulk::BulkConn;
use adt_router::store::Store;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.store_options())
        .await
        .context("opening database")
}

/// Runs `f` with a bulk connection on a blocking thread.
async fn with_bulk<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&mut BulkConn) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<T> {
        let mut conn = BulkConn::open(&store, rt).context("opening a database connection")?;
        Ok(f(&mut conn))
    })
    .await?
}

fn load(config: &Option<PathBuf>) -> anyhow::Result<Settings> {
    Settings::load(config.as_deref()).context("loading configuration")
}

fn settings_json(s: &Settings) -> String {
    // JSON keeps the section structure readable without a TOML serializer dependency.
    serde_json::to_string_pretty(s).unwrap_or_default()
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
            messages::send(
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
            messages::export(&settings, since.as_deref(), with_body).await
        }
        #[cfg(feature = "tools")]
        Command::Bench {
            to,
            conns,
            n,
            message,
        } => bench::bench(&to, conns, n, message).await,
        Command::Replay { since, from_offset } => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            messages::replay(&settings, since.as_deref(), from_offset.as_deref()).await
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
                directory::nppes_import(
                    &settings,
                    npidata,
                    endpoints,
                    incremental,
                    max_bad_rows,
                    quiet,
                )
                .await
            }
            #[cfg(feature = "tools")]
            NppesCommand::Synth {
                providers,
                endpoints,
                out_dir,
                seed,
            } => directory::nppes_synth(providers, endpoints, &out_dir, seed),
        },
        Command::Directory { command } => {
            let settings = load(&cli.config)?;
            match command {
                DirectoryCommand::Show { npi, format } => {
                    directory::directory_show(&settings, &npi, format == ShowFormat::Json).await
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
                    directory::directory_override(
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
            } => roster::roster_import(&load(&cli.config)?, file, source, replace).await,
            #[cfg(feature = "tools")]
            RosterCommand::Synth {
                patients,
                out,
                seed,
            } => roster::roster_synth(patients, &out, seed),
        },
        Command::Attribution { command } => {
            let settings = load(&cli.config)?;
            match command {
                AttributionCommand::Explain {
                    file,
                    format: JsonFormat::Json,
                } => attribution::attribution_explain(&settings, &file).await,
                #[cfg(feature = "tools")]
                AttributionCommand::Bench { samples } => {
                    attribution::attribution_bench(&settings, samples).await
                }
            }
        }
        Command::Rules { command } => {
            let settings = load(&cli.config)?;
            match command {
                RulesCommand::Check { dir } => routing::rules_check(&settings, dir),
                RulesCommand::Explain {
                    file,
                    format: JsonFormat::Json,
                    rules,
                } => routing::rules_explain(&settings, &file, rules).await,
                RulesCommand::Simulate {
                    since,
                    until,
                    rules,
                } => routing::rules_simulate(&settings, &since, until.as_deref(), &rules).await,
            }
        }
        Command::Resend {
            notification,
            recipient,
            since,
        } => {
            routing::resend(
                &load(&cli.config)?,
                notification,
                recipient,
                since.as_deref(),
            )
            .await
        }
        #[cfg(feature = "tools")]
        Command::Route {
            command: RouteCommand::Drain,
        } => routing::route_drain(&load(&cli.config)?).await,
        Command::Notifications {
            command:
                NotificationsCommand::Export {
                    format: Format::Jsonl,
                },
        } => routing::notifications_export(&load(&cli.config)?).await,
        Command::CheckConfig => {
            let settings =
                Settings::load(cli.config.as_deref()).context("loading configuration")?;
            println!("{}", settings_json(&settings));
            Ok(ExitCode::SUCCESS)
        }
    }
}
