//! A function vertex's task: calls of a [`BatchFunction`] on a pool, in input order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rillet_common::{Result, RilletError};

use super::{OutputRouter, TaskGuard};
use crate::blocking::BlockingPool;
use crate::channel::InputGate;
use crate::checkpointing::TaskLink;
use crate::function::{BatchFunction, RowBatcher, check_output_schema, with_call};
use crate::memory::{self, CallBudget, CallSizer};
use crate::message::StreamMessage;
use crate::metrics::OperatorMetrics;

/// Runs a function vertex's task: cut the input into the function's batch size and keep as
/// many calls running as the pool has workers, sending results in input order. One task
/// thus uses every worker (a single-partition input still spreads over all cores) without
/// reordering rows. A call that finishes before an earlier, slower one holds its result
/// until that one is sent, and its worker starts the next call meanwhile instead of idling
/// (at most twice the pool's size of calls are in flight, running or held). Each call first
/// reserves its estimated memory from the job's [`CallBudget`]; functions with independent
/// rows get fewer rows per call when rows are large.
// The task's parts (ends, metrics, pool, budget, checkpoint link, restored state) are the
// same as every other task runner's, passed one by one like theirs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_function(
    function: Arc<dyn BatchFunction>,
    mut input: InputGate,
    mut output: OutputRouter,
    metrics: Arc<OperatorMetrics>,
    pool: BlockingPool,
    budget: CallBudget,
    link: Option<TaskLink>,
    restored: Vec<Vec<u8>>,
) -> Result<Vec<String>> {
    let _guard = TaskGuard::start(&metrics);
    let mut batcher: Option<RowBatcher> = None;
    let expected = function.output_schema();
    let max_running = pool.size();
    // Running calls plus finished ones held back to keep the output in input order.
    let max_in_flight = 2 * max_running;
    // Calls in `calls` whose work is done (their results wait behind an earlier call), and
    // a signal from each call as it finishes, so that its worker gets the next call at once.
    let finished = Arc::new(AtomicUsize::new(0));
    let call_finished = Arc::new(tokio::sync::Notify::new());
    let running = |calls: &FuturesOrdered<_>| calls.len() - finished.load(Ordering::SeqCst);
    let mut sizer = CallSizer::new(
        function.batch_size(),
        function.splittable_batches(),
        budget.capacity() / max_running,
    );
    // Batches cut from the input and not yet handed to the pool; on a restore, first the
    // rows whose calls were in flight at the checkpoint.
    let mut ready: VecDeque<RecordBatch> = VecDeque::new();
    for state in &restored {
        ready.extend(crate::stream::decode_batches(state)?);
    }
    // Counted, not hidden: a model sees these rows a second time.
    metrics.add_rows_recalled(ready.iter().map(|b| b.num_rows() as u64).sum());
    let mut calls = FuturesOrdered::new();
    // The input of each call in `calls`, in the same order: what a checkpoint taken while
    // they run records, so that a restore calls them again.
    let mut called: VecDeque<RecordBatch> = VecDeque::new();
    // Input rows handed to calls so far: the first row of the next call.
    let mut rows_called: u64 = 0;
    // What ends the input once the calls before it are done: a barrier or the end.
    let mut held: Option<StreamMessage> = None;
    loop {
        while running(&calls) < max_running
            && calls.len() < max_in_flight
            && let Some(mut batch) = ready.pop_front()
        {
            let rows = sizer.rows_for(batch.num_rows());
            if rows < batch.num_rows() {
                ready.push_front(batch.slice(rows, batch.num_rows() - rows));
                batch = batch.slice(0, rows);
            }
            let estimate = sizer.estimate(rows);
            called.push_back(batch.clone());
            let first_row = rows_called;
            rows_called += rows as u64;
            let (f, pool, m, budget) = (
                function.clone(),
                pool.clone(),
                metrics.clone(),
                budget.clone(),
            );
            let (finished, call_finished) = (finished.clone(), call_finished.clone());
            calls.push_back(async move {
                let called = async {
                    let _reserved = budget.reserve(estimate, Some(&m)).await?;
                    let call_metrics = m.clone();
                    pool.run(Some(&m), move || {
                        let (result, charged) = with_call(first_row, &call_metrics, || {
                            memory::measure_call(|| f.call(batch))
                        });
                        result.map(|r| (r, charged))
                    })
                    .await
                }
                .await;
                finished.fetch_add(1, Ordering::SeqCst);
                call_finished.notify_one();
                let (result, charged) = called?;
                Ok::<_, RilletError>((result, rows, charged))
            });
        }
        if calls.is_empty() && ready.is_empty() {
            match held.take() {
                Some(StreamMessage::End) => {
                    output.end().await;
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Barrier(barrier)) => {
                    // The last barrier, once every call started before it has finished and
                    // been sent: nothing is in flight, so the state is empty.
                    if let Some(link) = &link {
                        link.ack(barrier.checkpoint_id, None).await?;
                    }
                    if !output.send(StreamMessage::Barrier(barrier)).await? {
                        return Ok(Vec::new());
                    }
                }
                // Forwarded once the rows before it have gone out.
                Some(StreamMessage::Watermark(watermark))
                    if !output.send(StreamMessage::Watermark(watermark)).await? =>
                {
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Watermark(_)) => {}
                Some(StreamMessage::Idle) if !output.send(StreamMessage::Idle).await? => {
                    return Ok(Vec::new());
                }
                Some(StreamMessage::Idle) => {}
                Some(StreamMessage::Batch(_)) => {
                    return Err(RilletError::internal("a batch was held as a barrier"));
                }
                None => {}
            }
        }
        let accepting = held.is_none()
            && ready.is_empty()
            && running(&calls) < max_running
            && calls.len() < max_in_flight;
        tokio::select! {
            // Finished calls go out first, in order, so results never wait behind input.
            biased;
            Some(result) = calls.next(), if !calls.is_empty() => {
                finished.fetch_sub(1, Ordering::SeqCst);
                called.pop_front();
                let (result, rows, charged) = result?;
                sizer.observe(rows, charged);
                check_output_schema(function.as_ref(), &result, &expected)?;
                if result.num_rows() > 0 {
                    metrics.add_output(result.num_rows(), result.get_array_memory_size());
                    if !output.send(StreamMessage::Batch(result)).await? {
                        return Ok(Vec::new());
                    }
                }
            }
            // A call finished behind an earlier one: its worker is free for the next call.
            () = call_finished.notified() => {}
            message = input.recv(), if accepting => match message? {
                Some(StreamMessage::Batch(batch)) => {
                    metrics.add_input(batch.num_rows());
                    if batch.num_rows() > 0 {
                        match function.batch_size() {
                            Some(size) => ready.extend(
                                batcher
                                    .get_or_insert_with(|| RowBatcher::new(batch.schema(), size))
                                    .push(batch)?,
                            ),
                            None => ready.push_back(batch),
                        }
                    }
                }
                Some(end_or_barrier) => {
                    // Rows buffered before a barrier belong to the checkpoint before it
                    // (and before a watermark, to the event time before it).
                    if let Some(rest) = batcher.as_mut().map(|b| b.flush()).transpose()?.flatten() {
                        ready.push_back(rest);
                    }
                    match (end_or_barrier, &link) {
                        // A checkpoint does not wait for the calls under way (a model may
                        // take seconds): their input rows, and those not yet called, are
                        // the task's state, and their results go out after the barrier,
                        // in the next checkpoint. A restore calls them again.
                        (StreamMessage::Barrier(barrier), Some(link)) if !barrier.last => {
                            let pending: Vec<RecordBatch> =
                                called.iter().chain(ready.iter()).cloned().collect();
                            let state = match pending.first() {
                                Some(first) => {
                                    Some(crate::stream::encode_batches(&first.schema(), &pending)?)
                                }
                                None => None,
                            };
                            link.ack(barrier.checkpoint_id, state).await?;
                            if !output.send(StreamMessage::Barrier(barrier)).await? {
                                return Ok(Vec::new());
                            }
                        }
                        // The end, a watermark, or the last barrier (nothing may follow
                        // it) wait for the calls before them.
                        (message, _) => held = Some(message),
                    }
                }
                // Upstream vanished: it failed or was cancelled, and reports that itself.
                None => return Err(RilletError::Cancelled),
            },
        }
    }
}
