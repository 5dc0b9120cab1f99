//! Progress of long commands: a bar on a terminal, plain lines otherwise (logs, CI, pipes).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(label.to_owned());
            b
        });
        Self { label: label.to_owned(), bar, last_line: None }
    }

    /// Reports `done` of `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            return;
        }
        // One line a second at most, and always the last one.
        let due = self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || done >= total {
            self.last_line = Some(Instant::now());
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            // A progress line is worth no failure: a closed or full stderr drops it.
            let _ = writeln!(std::io::stderr(), "{}: {done}/{total} ({pct}%)", self.label);
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        }
    }
}
