//! Live per-operator progress in a terminal: rows, bytes, rows/s and what each operator is
//! waiting on. Silent when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;

use crate::metrics::OperatorMetrics;

/// A running progress display; [`finish`](Self::finish) draws the final figures.
pub(crate) struct ProgressDisplay {
    stop: oneshot::Sender<()>,
}

impl ProgressDisplay {
    /// Start drawing if stderr is a terminal; `None` otherwise.
    pub(crate) fn start(metrics: Arc<Vec<Arc<OperatorMetrics>>>) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let style = ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars: Vec<ProgressBar> = metrics
            .iter()
            .map(|_| multi.add(ProgressBar::new_spinner().with_style(style.clone())))
            .collect();
        let (stop, mut stopped) = oneshot::channel();
        crate::global_runtime().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                let done = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                for (bar, m) in bars.iter().zip(metrics.iter()) {
                    bar.set_message(m.snapshot().summary());
                    bar.tick();
                }
                if done {
                    for bar in &bars {
                        bar.finish();
                    }
                    break;
                }
            }
        });
        Some(Self { stop })
    }

    pub(crate) fn finish(self) {
        let _ = self.stop.send(());
    }
}
