//! One replica process: started, handed its function, and reached over Arrow Flight.
//!
//! A replica is a worker process (the same command as a UDF's worker pool) whose setup
//! frame asks it to serve: it builds the function (loads the model), starts an Arrow
//! Flight server on a loopback port, and only then answers the setup with that port. Its
//! stdin stays open as a lifeline: closing it (a drain, the service's shutdown, the
//! engine's death) ends the replica.

use std::io::{BufReader, BufWriter};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightClient, FlightDescriptor};
use futures::{StreamExt, TryStreamExt};
use rillet_operator::resources::Reservation;
use rillet_processes::protocol::{self, ERROR, READY, SETUP};
use rillet_processes::{ProcessCommand, describe_exit, lock_child, spawn_process};
use tonic::transport::{Channel, Endpoint};

/// The prefix a replica puts before the traceback of an exception its function raised, so
/// the client can tell a failing function (not retried: it would fail again) from a
/// failing replica (retried on another one).
pub(crate) const FUNCTION_ERROR: &str = "rillet-function-error:";

/// Requests travel as Flight messages of at most this size: a large batch is streamed in
/// slices, never sent as one message.
pub(crate) const MESSAGE_BYTES: usize = 2 << 20;

/// One value (a row of a column) larger than [`MESSAGE_BYTES`] cannot be sliced; messages
/// up to this size are accepted so that a single large image or long clip still fits.
const LARGEST_MESSAGE: usize = 256 << 20;

/// A started replica whose function is built and whose server listens.
pub(crate) struct Launched {
    pub port: u16,
    pub lifeline: ChildStdin,
    pub client: FlightServiceClient<Channel>,
}

/// How a launch failed.
pub(crate) enum LaunchError {
    /// The function's constructor raised: every replica would fail the same way.
    Constructor(String),
    /// The process died or misbehaved before it was ready (killed while loading, out of
    /// memory): another replica may well start.
    Process(String),
}

/// Start a replica process for `label` and wait until it serves. `registered` gets the
/// process as soon as it exists, so that a shutdown can stop a replica still loading.
pub(crate) fn launch(
    command: &ProcessCommand,
    label: &str,
    reservation: &Reservation,
    cpus: f64,
    registered: impl FnOnce(u32, Arc<Mutex<Child>>),
) -> Result<Launched, LaunchError> {
    let mut child =
        spawn_process(command, label, reservation, cpus).map_err(LaunchError::Process)?;
    let pid = child.id();
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LaunchError::Process(
            "a replica process has no pipes".into(),
        ));
    };
    let child = Arc::new(Mutex::new(child));
    registered(pid, child.clone());
    let mut input = BufWriter::new(stdin);
    let mut output = BufReader::new(stdout);
    let greeting = protocol::write_frame(&mut input, SETUP, command.setup.as_slice())
        .and_then(|()| protocol::read_frame(&mut output));
    let port = match greeting {
        Ok(Some((READY, port))) => String::from_utf8_lossy(&port).trim().parse::<u16>().ok(),
        Ok(Some((ERROR, text))) => {
            let _ = lock_child(&child).wait();
            return Err(LaunchError::Constructor(format!(
                "a replica could not start: {}",
                String::from_utf8_lossy(&text)
            )));
        }
        _ => None,
    };
    let Some(port) = port else {
        let mut process = lock_child(&child);
        let _ = process.kill();
        let status = process.wait().ok();
        return Err(LaunchError::Process(format!(
            "replica process {pid} {} before it was ready; its output above may say why",
            describe_exit(status)
        )));
    };
    let client = rillet_operator::global_runtime()
        .block_on(connect(port))
        .map_err(|e| {
            let _ = lock_child(&child).kill();
            LaunchError::Process(format!(
                "cannot connect to replica {pid} on port {port}: {e}"
            ))
        })?;
    let lifeline = input
        .into_inner()
        .map_err(|e| LaunchError::Process(format!("replica {pid}: {e}")))?;
    Ok(Launched {
        port,
        lifeline,
        client,
    })
}

async fn connect(port: u16) -> Result<FlightServiceClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(FlightServiceClient::new(channel)
        .max_decoding_message_size(LARGEST_MESSAGE)
        .max_encoding_message_size(LARGEST_MESSAGE))
}

/// Why an exchange with a replica failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The function raised (its traceback): the same batch would fail anywhere.
    Function(String),
    /// The replica or the connection failed: the batch may go to another replica.
    Replica(String),
}

/// Send `batch` to a replica with one `DoExchange`, streamed in messages of at most
/// [`MESSAGE_BYTES`], and gather its reply.
pub(crate) async fn exchange(
    client: FlightServiceClient<Channel>,
    batch: RecordBatch,
) -> Result<RecordBatch, ExchangeError> {
    let request = FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(MESSAGE_BYTES)
        // Flight servers expect the first message of an exchange to say what it is.
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd("call")))
        .build(futures::stream::once(async move { Ok(batch) }));
    let mut flight = FlightClient::new_from_inner(client);
    let replies = flight.do_exchange(request).await.map_err(classify)?;
    let batches: Vec<RecordBatch> = replies.try_collect().await.map_err(classify)?;
    let Some(first) = batches.first() else {
        return Err(ExchangeError::Replica(
            "the replica replied without a batch".into(),
        ));
    };
    concat_batches(&first.schema(), &batches)
        .map_err(|e| ExchangeError::Replica(format!("its reply does not concatenate: {e}")))
}

fn classify(error: FlightError) -> ExchangeError {
    if let FlightError::Tonic(status) = &error
        && let Some(at) = status.message().find(FUNCTION_ERROR)
    {
        let text = &status.message()[at + FUNCTION_ERROR.len()..];
        return ExchangeError::Function(text.trim().to_string());
    }
    ExchangeError::Replica(error.to_string())
}

/// Ask a replica whether it is alive and serving (the `health` action).
pub(crate) async fn healthy(client: FlightServiceClient<Channel>, within: Duration) -> bool {
    let probe = async move {
        let mut flight = FlightClient::new_from_inner(client);
        let mut replies = flight.do_action(Action::new("health", "")).await.ok()?;
        replies.next().await?.ok()
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_error_is_the_batchs_fault_anything_else_the_replicas() {
        // The replica marks the function's own exception; the batch would fail anywhere.
        let raised = tonic::Status::internal(format!(
            "the call failed: {FUNCTION_ERROR} ValueError: bad row 3"
        ));
        match classify(FlightError::Tonic(Box::new(raised))) {
            ExchangeError::Function(text) => assert_eq!(text, "ValueError: bad row 3"),
            ExchangeError::Replica(text) => {
                panic!("a function error taken as the replica's: {text}")
            }
        }
        // A dropped connection or an unmarked status: another replica may serve the batch.
        let gone = tonic::Status::unavailable("connection refused");
        assert!(matches!(
            classify(FlightError::Tonic(Box::new(gone))),
            ExchangeError::Replica(text) if text.contains("connection refused")
        ));
        assert!(matches!(
            classify(FlightError::ProtocolError("no schema".into())),
            ExchangeError::Replica(_)
        ));
    }
}
