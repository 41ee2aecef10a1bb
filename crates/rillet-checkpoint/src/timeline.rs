//! A job's timeline: the snapshot ids used up, and the snapshots retired when a run went
//! back in time.
//!
//! Snapshot ids increase within a job and never come round again: sinks name their commits
//! by them. When a run restores a snapshot `r` older than the newest one (a user resuming
//! an older savepoint, or a fallback past a damaged checkpoint), what the newer snapshots
//! committed is withdrawn, to be written again from `r`'s state. From that moment every
//! snapshot newer than `r` describes output that is gone, so going back is one decision
//! recorded before anything is withdrawn ([`CheckpointStore::rewind_to`]):
//!
//! - the newer checkpoints are deleted;
//! - the newer savepoints stay (they are the user's) but are **retired**: neither a plain
//!   restart ([`CheckpointStore::latest`]) nor a resume naming one
//!   ([`CheckpointStore::load`]) restores it, and the refusal says why;
//! - their ids are used up: the next snapshot's id is above all of them.
//!
//! ```text
//! <location>/<job>/_timeline      {"format": 1, "through": 9, "rewinds": [{"to": 4, "through": 9, "at_ms": ...}]}
//! <location>/<job>/_retired_ids   9   (the highest id used up, as versions before rewinds read it)
//! ```
//!
//! A store without `_timeline` reads `_retired_ids` as a timeline without rewinds.

use bytes::Bytes;
use rillet_common::{Result, RilletError};
use serde::{Deserialize, Serialize};

use crate::control::now_ms;
use crate::store::{CheckpointStore, Kind, ReadError};

/// The object beside a job's snapshots holding its timeline.
const TIMELINE: &str = "_timeline";
/// The highest id used up, alone, as a bare number: what versions before rewinds wrote and
/// read, kept up to date so one of them can still run the job (without rewinds).
const USED_UP: &str = "_retired_ids";
/// The timeline format this crate writes.
const FORMAT: u32 = 1;

/// One going back in time: snapshot `to` was restored while snapshots up to `through`
/// existed; every id in `to + 1 ..= through` is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewind {
    /// The snapshot restored.
    pub to: u64,
    /// The highest snapshot id that existed then.
    pub through: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The ids used up and the rewinds of a job (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Timeline {
    format: u32,
    /// Every id up to this one is used up, whether or not a snapshot still has it.
    through: u64,
    rewinds: Vec<Rewind>,
}

impl Timeline {
    /// The rewind that retired snapshot `id`, if one did.
    pub(crate) fn retired_by(&self, id: u64) -> Option<&Rewind> {
        self.rewinds.iter().find(|r| r.to < id && id <= r.through)
    }

    /// The highest id used up, if any.
    pub(crate) fn through(&self) -> Option<u64> {
        (self.through > 0).then_some(self.through)
    }

    fn parse(bytes: &[u8], path: &str) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| RilletError::Checkpoint(format!("{path} is not text")))?;
        if let Ok(through) = text.trim().parse::<u64>() {
            return Ok(Self {
                format: FORMAT,
                through,
                rewinds: Vec::new(),
            });
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| RilletError::Checkpoint(format!("{path} is not a timeline: {e}")))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            return Err(RilletError::IncompatibleState(format!(
                "{path}: timeline format {}, and this build reads format {FORMAT}: written by \
                 another Rillet version; run the job with that version",
                format.map_or_else(|| "none".to_string(), |f| f.to_string())
            )));
        }
        serde_json::from_value(value)
            .map_err(|e| RilletError::Checkpoint(format!("{path} is not a timeline: {e}")))
    }
}

/// Why snapshot `id` of `kind` in `store` is not restored: `rewind` retired it.
pub(crate) fn retired_error(
    store: &CheckpointStore,
    kind: Kind,
    id: u64,
    rewind: &Rewind,
) -> RilletError {
    RilletError::Checkpoint(format!(
        "{} of job {} is retired: a run went back to snapshot {} (at {} ms since the epoch) \
         and withdrew the output of every later snapshot, through {}; restoring it would \
         lose those rows. Resume from snapshot {} or a snapshot taken since",
        kind.directory(id),
        store.job(),
        rewind.to,
        rewind.at_ms,
        rewind.through,
        rewind.to
    ))
}

/// What [`CheckpointStore::rewind_to`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewound {
    /// Checkpoints deleted, by id.
    pub deleted: Vec<u64>,
    /// Savepoints retired (kept, never restored), by id.
    pub retired: Vec<u64>,
}

impl CheckpointStore {
    pub(crate) async fn timeline(&self) -> Result<Timeline> {
        for name in [TIMELINE, USED_UP] {
            let path = self.root.clone().join(name);
            match self.read(&path).await {
                Ok(bytes) => return Timeline::parse(&bytes, path.as_ref()),
                Err(ReadError::NotFound) => {}
                Err(ReadError::Other(e)) => return Err(e),
            }
        }
        Ok(Timeline {
            format: FORMAT,
            ..Timeline::default()
        })
    }

    async fn write_timeline(&self, timeline: &Timeline) -> Result<()> {
        let bytes = serde_json::to_vec(timeline)
            .map_err(|e| RilletError::internal(format!("cannot encode the timeline: {e}")))?;
        self.write(&self.root.clone().join(TIMELINE), Bytes::from(bytes))
            .await?;
        let used_up = Bytes::from(timeline.through.to_string());
        self.write(&self.root.clone().join(USED_UP), used_up).await
    }

    /// Go back to snapshot `restored` (0: to nothing, when no snapshot could be restored):
    /// record the rewind, then delete every newer checkpoint; newer savepoints stay,
    /// retired (see the module docs). Call before withdrawing any output. Nothing newer:
    /// nothing is recorded.
    pub async fn rewind_to(&self, restored: u64) -> Result<Rewound> {
        let mut timeline = self.timeline().await?;
        let newer: Vec<_> = self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.id > restored)
            .collect();
        // Snapshots an earlier rewind retired are not news: no new rewind for them alone
        // (their checkpoints, left by a crash in the middle of it, are deleted below).
        let unretired = newer.iter().filter(|s| timeline.retired_by(s.id).is_none());
        if let Some(through) = unretired.map(|s| s.id).max() {
            timeline.format = FORMAT;
            timeline.through = timeline.through.max(through);
            timeline.rewinds.push(Rewind {
                to: restored,
                through,
                at_ms: now_ms(),
            });
            // Recorded first: from here no newer snapshot restores, whatever happens below.
            self.write_timeline(&timeline).await?;
        }
        let mut rewound = Rewound::default();
        for snapshot in newer {
            match snapshot.kind {
                Kind::Checkpoint => {
                    self.delete(Kind::Checkpoint, snapshot.id).await?;
                    rewound.deleted.push(snapshot.id);
                }
                Kind::Savepoint => rewound.retired.push(snapshot.id),
            }
        }
        Ok(rewound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_reads_as_a_timeline_without_rewinds_and_another_format_is_refused() {
        let old = Timeline::parse(b"7\n", "t").unwrap();
        assert_eq!((old.through(), old.retired_by(5)), (Some(7), None));
        let e = Timeline::parse(br#"{"format": 2, "through": 1, "rewinds": []}"#, "t").unwrap_err();
        assert!(matches!(e, RilletError::IncompatibleState(_)), "{e}");
        assert!(Timeline::parse(b"{oops", "t").is_err());
    }

    #[test]
    fn a_rewind_retires_exactly_the_ids_after_its_target() {
        let timeline = Timeline {
            format: FORMAT,
            through: 9,
            rewinds: vec![Rewind {
                to: 4,
                through: 9,
                at_ms: 0,
            }],
        };
        let retired: Vec<u64> = (1..=11)
            .filter(|&id| timeline.retired_by(id).is_some())
            .collect();
        assert_eq!(retired, vec![5, 6, 7, 8, 9]);
    }
}
