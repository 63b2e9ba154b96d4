//! Progress for long imports: a bar with rows/s on a terminal, a plain line every few
//! seconds otherwise (CI logs, cron mail).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    quiet: bool,
}

impl Progress {
    /// `total_bytes`: the file size when known, for a real bar with an ETA.
    pub fn new(label: &str, total_bytes: Option<u64>, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = match total_bytes {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::new_spinner(),
            };
            let template = if total_bytes.is_some() {
                "{prefix} [{bar:30}] {percent:>3}% {msg} eta {eta}"
            } else {
                "{prefix} {spinner} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            label: label.to_string(),
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            quiet,
        }
    }

    pub fn rate(&self, rows: u64) -> f64 {
        rows as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Called every few thousand rows.
    pub fn update(&mut self, rows: u64, byte: u64) {
        let rate = self.rate(rows);
        match &self.bar {
            Some(bar) => {
                bar.set_position(byte);
                bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
            }
            None if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!("{}: {rows} rows, {rate:.0} rows/s", self.label);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
