//! The operators of streaming jobs, which the planner maps a streaming plan onto: the
//! expression vertex (filters, projections, event time), watermark assignment, and running
//! and window aggregates over keyed state. Their state is written with one codec
//! (`state`), so a snapshot restores across versions and after rescaling.

mod expr;
mod running;
mod state;
mod watermark;
mod window;

pub use expr::{ExprStep, ExprVertex};
#[doc(hidden)]
pub use running::fuzz_restore;
pub use running::{RunningAggregate, RunningFunction, RunningSpec, running_schema};
pub use watermark::{
    EventClock, TimeSpan, WATERMARK_INTERVAL, WatermarkAssigner, check_event_time_type, event_times,
};
pub use window::{WindowAggregate, WindowSpec};
