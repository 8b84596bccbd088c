//! The fetch progress bar: bytes done of bytes needed, on stderr, only for a human at a
//! terminal (hidden under `--json` or when stderr is not a TTY, so logs and scripts get no
//! control characters).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::fetch::JobProgress;
use crate::peer::Progress;

/// An indicatif bar driven by a fetch job.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar on stderr, or a hidden one when `visible` is false or stderr is not a terminal.
    #[must_use]
    pub fn new(visible: bool) -> Self {
        let target = if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        Self { bar: ProgressBar::with_draw_target(Some(0), target) }
    }

    fn phase(&self, label: &str, bytes: u64) {
        let style = ProgressStyle::with_template(&format!(
            "{label} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_length(bytes);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }
}

impl Progress for Bar {
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn rewind(&self, bytes: u64) {
        self.bar.dec(bytes);
    }
}

impl JobProgress for Bar {
    fn start_check(&self, files: usize, bytes: u64) {
        self.phase("checking", bytes);
        self.bar.set_message(format!("{files} local files"));
    }

    fn start_transfer(&self, files: usize, bytes: u64) {
        self.phase("fetching", bytes);
        self.bar.set_message(format!("{files} files"));
    }

    fn println(&self, line: &str) {
        self.bar.println(line);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
