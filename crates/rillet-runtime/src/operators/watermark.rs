//! Event time: reading it from a column, and the watermarks that say how far it has got.
//!
//! An assigner watches the event-time column of the rows passing through it and, at most
//! every [`WATERMARK_INTERVAL`], declares the watermark `latest event time seen − delay`:
//! rows older than that are late from then on. The runtime merges the watermarks of a
//! task's inputs (their least) and windows fire on them. The delay is the disorder the job
//! tolerates; a window's allowed lateness adds more for that window alone.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use rillet_runtime::operators::EventClock;
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![5, 42, 17]))])
//!     .unwrap();
//! let mut clock = EventClock::new(0, 10);
//! clock.observe(&batch).unwrap();
//! assert_eq!(clock.take(), Some(32)); // 42 seen, 10 of disorder allowed
//! assert_eq!(clock.take(), None);     // nothing new
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use rillet_common::{Result, RilletError};
use rillet_operator::keygroups::TaskPlacement;
use rillet_operator::{OperatorTask, StreamOperator, WATERMARK_END};

/// The least time between two watermarks of one assigner: each one is broadcast to every
/// downstream task and drains asynchronous stages, so they are paced (as Flink's periodic
/// watermarks are).
pub const WATERMARK_INTERVAL: Duration = Duration::from_millis(200);

/// Whether `data_type` can carry event time: timestamps, dates and integers.
pub fn check_event_time_type(name: &str, data_type: &DataType) -> Result<()> {
    let ok = matches!(
        data_type,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    ) || data_type.is_integer();
    if ok {
        Ok(())
    } else {
        Err(RilletError::invalid_argument(format!(
            "event time column {name:?} is {data_type}; it must be a timestamp, a date or an \
             integer"
        )))
    }
}

/// A length of event time: a number in the column's own units, or a duration (for
/// timestamp and date columns, converted to their unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpan {
    /// In the event-time column's units.
    Units(i64),
    /// A duration.
    Duration(Duration),
}

impl TimeSpan {
    /// The span in the units of column `name` of type `data_type`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use arrow::datatypes::{DataType, TimeUnit};
    /// use rillet_runtime::operators::TimeSpan;
    ///
    /// let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    /// assert_eq!(TimeSpan::Duration(Duration::from_secs(2)).resolve("ts", &ms).unwrap(), 2000);
    /// assert_eq!(TimeSpan::Units(7).resolve("seq", &DataType::Int64).unwrap(), 7);
    /// assert!(TimeSpan::Duration(Duration::from_secs(2)).resolve("seq", &DataType::Int64).is_err());
    /// ```
    pub fn resolve(&self, name: &str, data_type: &DataType) -> Result<i64> {
        use arrow::datatypes::TimeUnit;
        let duration = match self {
            TimeSpan::Units(n) => return Ok(*n),
            TimeSpan::Duration(d) => *d,
        };
        let units = match data_type {
            DataType::Timestamp(TimeUnit::Second, _) => duration.as_secs() as i128,
            DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => {
                duration.as_millis() as i128
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => duration.as_micros() as i128,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => duration.as_nanos() as i128,
            DataType::Date32 => (duration.as_secs() / 86_400) as i128,
            other => {
                return Err(RilletError::invalid_argument(format!(
                    "event time column {name:?} is {other}, not a time: give lengths of its \
                     event time as numbers in its units"
                )));
            }
        };
        i64::try_from(units).map_err(|_| {
            RilletError::invalid_argument(format!("{duration:?} is too long for column {name:?}"))
        })
    }
}

/// An event-time column as i64 values in the column's own unit (nulls stay null).
pub fn event_times(column: &ArrayRef) -> Result<Arc<arrow::array::Int64Array>> {
    let cast = arrow::compute::cast(column, &DataType::Int64)?;
    Ok(Arc::new(cast.as_primitive::<Int64Type>().clone()))
}

/// Tracks the latest event time seen in one column and paces the watermarks derived from
/// it (see the module docs).
#[derive(Debug, Clone)]
pub struct EventClock {
    column: usize,
    delay: i64,
    latest: Option<i64>,
    emitted: Option<i64>,
    emitted_at: Option<Instant>,
    idle_timeout: Option<std::time::Duration>,
}

impl EventClock {
    /// A clock on input column `column`, its watermark `delay` behind the latest time.
    pub fn new(column: usize, delay: i64) -> Self {
        Self {
            column,
            delay,
            latest: None,
            emitted: None,
            emitted_at: None,
            idle_timeout: None,
        }
    }

    /// After `timeout` without a row, the task running the clock tells the tasks after it
    /// that it is idle: it stops holding their event time back until rows come again.
    pub fn with_idle_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The idle timeout, if one was set.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.idle_timeout
    }

    /// The watermark of every row seen, even if the last one went out less than
    /// [`WATERMARK_INTERVAL`] ago: what a task sends before it goes idle.
    pub fn flush(&mut self) -> Option<i64> {
        let candidate = self.latest?.saturating_sub(self.delay);
        if self.emitted.is_some_and(|e| e >= candidate) {
            return None;
        }
        self.emitted = Some(candidate);
        self.emitted_at = Some(Instant::now());
        Some(candidate)
    }

    /// Note the event times of `batch`.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        let times = event_times(batch.column(self.column))?;
        if let Some(max) = arrow::compute::max(times.as_ref()) {
            self.latest = Some(self.latest.map_or(max, |l| l.max(max)));
        }
        Ok(())
    }

    /// The watermark, when it has advanced and the last one is at least
    /// [`WATERMARK_INTERVAL`] old.
    pub fn take(&mut self) -> Option<i64> {
        let candidate = self.latest?.saturating_sub(self.delay);
        if self.emitted.is_some_and(|e| e >= candidate)
            || self
                .emitted_at
                .is_some_and(|at| at.elapsed() < WATERMARK_INTERVAL)
        {
            return None;
        }
        self.emitted = Some(candidate);
        self.emitted_at = Some(Instant::now());
        Some(candidate)
    }

    /// What to send on for an input watermark: an assigner replaces upstream event time
    /// with its own, except for the end of the input, which ends its event time too.
    pub fn on_input(&mut self, watermark: i64) -> Option<i64> {
        (watermark == WATERMARK_END).then(|| {
            self.emitted = Some(WATERMARK_END);
            WATERMARK_END
        })
    }
}

/// The operator of `df.with_watermark(...)`: rows pass unchanged; watermarks come from
/// its [`EventClock`]. In a streaming job it is fused into the expression vertex before it.
#[derive(Debug, Clone)]
pub struct WatermarkAssigner {
    schema: SchemaRef,
    column: usize,
    delay: i64,
    idle_timeout: Option<std::time::Duration>,
}

impl WatermarkAssigner {
    /// Event time from `column` of `schema`, watermarks `delay` behind it.
    pub fn try_new(schema: SchemaRef, column: usize, delay: i64) -> Result<Self> {
        let field = schema.fields().get(column).ok_or_else(|| {
            RilletError::invalid_argument(format!("watermark: no column {column}"))
        })?;
        check_event_time_type(field.name(), field.data_type())?;
        if delay < 0 {
            return Err(RilletError::invalid_argument(format!(
                "watermark delay must not be negative, got {delay}"
            )));
        }
        Ok(Self {
            schema,
            column,
            delay,
            idle_timeout: None,
        })
    }

    /// Its tasks go idle after `timeout` without a row (see [`EventClock::with_idle_timeout`]).
    pub fn with_idle_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The clock a task of it keeps.
    pub fn clock(&self) -> EventClock {
        EventClock::new(self.column, self.delay).with_idle_timeout(self.idle_timeout)
    }
}

impl StreamOperator for WatermarkAssigner {
    fn name(&self) -> String {
        format!(
            "watermark on {} - {}",
            self.schema.field(self.column).name(),
            self.delay
        )
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn open(
        &self,
        _placement: TaskPlacement,
        _restored: &[Vec<u8>],
    ) -> Result<Box<dyn OperatorTask>> {
        Ok(Box::new(self.clock()))
    }
}

impl OperatorTask for EventClock {
    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.observe(&batch)?;
        Ok(vec![batch])
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        // Not restored: after a restart event time starts over and the windows' own state
        // (their watermark included) keeps results exact.
        Ok(None)
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<(Vec<RecordBatch>, Option<i64>)> {
        Ok((Vec::new(), self.on_input(watermark)))
    }

    fn take_watermark(&mut self) -> Option<i64> {
        self.take()
    }

    fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.idle_timeout
    }

    fn flush_watermark(&mut self) -> Option<i64> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one task of an operator on one.
    const ONE: TaskPlacement = TaskPlacement {
        task: 0,
        parallelism: 1,
    };
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    #[test]
    fn watermarks_are_paced_and_only_advance() {
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
        let batch = |v: Vec<Option<i64>>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        let mut clock = EventClock::new(0, 5);
        assert_eq!(clock.take(), None, "nothing seen yet");
        clock.observe(&batch(vec![Some(10), None])).unwrap();
        assert_eq!(clock.take(), Some(5));
        clock.observe(&batch(vec![Some(20)])).unwrap();
        assert_eq!(clock.take(), None, "paced: too soon after the last one");
        std::thread::sleep(WATERMARK_INTERVAL);
        assert_eq!(clock.take(), Some(15));
        clock.observe(&batch(vec![Some(3)])).unwrap();
        std::thread::sleep(WATERMARK_INTERVAL);
        assert_eq!(clock.take(), None, "an older row does not move it back");
        assert_eq!(clock.on_input(100), None, "upstream event time is replaced");
        assert_eq!(clock.on_input(WATERMARK_END), Some(WATERMARK_END));
    }

    #[test]
    fn event_time_must_be_a_time_or_an_integer() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let err = WatermarkAssigner::try_new(schema.clone(), 0, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a timestamp"), "{err}");
        assert!(WatermarkAssigner::try_new(schema.clone(), 1, -1).is_err());
        let op = WatermarkAssigner::try_new(schema.clone(), 1, 1000).unwrap();
        let mut task = op.open(ONE, &[]).unwrap();
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(TimestampMillisecondArray::from(vec![5_000])),
            ],
        )
        .unwrap();
        assert_eq!(task.process(rows).unwrap()[0].num_rows(), 1);
        assert_eq!(task.take_watermark(), Some(4_000));
    }
}
