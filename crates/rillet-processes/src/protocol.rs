//! The frames the engine and a process exchange over the process's stdin and stdout.
//!
//! A frame is one kind byte, the payload's length as 8 little-endian bytes, and the
//! payload. Batches travel as Arrow IPC streams (schema + one batch), so a process in any
//! language with an Arrow library can serve calls, and no row is ever pickled.
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | `S` setup | engine → process, first | opaque bytes the process understands (for Python: the pickled function) |
//! | `R` ready | process → engine | empty: the constructor (model load) finished |
//! | `C` call | engine → process | the arguments as an IPC stream |
//! | `O` ok | process → engine | the result as an IPC stream |
//! | `E` error | process → engine | UTF-8 text: the function's error with its traceback |
//!
//! Closing the process's stdin asks it to exit.

use std::io::{self, Read, Write};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use rillet_common::{Result, RilletError};

/// The first frame: how to build the process's function.
pub const SETUP: u8 = b'S';
/// The process is ready for calls.
pub const READY: u8 = b'R';
/// A call's arguments.
pub const CALL: u8 = b'C';
/// A call's result.
pub const RESULT: u8 = b'O';
/// The function failed; the payload says how.
pub const ERROR: u8 = b'E';

/// The largest frame: 4 GiB, above any batch the engine sends a process or takes back
/// (batches are cut to a UDF's batch size, and one Arrow string or binary column holds
/// at most 2 GiB). A longer length is a corrupt header, refused before a byte is read.
pub const MAX_FRAME: u64 = 4 << 30;

/// What a frame's payload is allocated up front at most: a longer one is allocated whole
/// only once this much of it has arrived, so a length that lies costs only the bytes
/// really sent, and a long reply that is real is not copied as it grows.
const FIRST_ALLOCATION: u64 = 16 << 20;

/// Write one frame.
pub fn write_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    if payload.len() as u64 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes is more than the {MAX_FRAME} a worker frame can hold: \
                 use a smaller batch_size",
                payload.len()
            ),
        ));
    }
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    out.flush()
}

/// Read one frame; `None` when the stream ended before a frame began. A header whose
/// length is above [`MAX_FRAME`], or a stream that ends inside a frame, is an error.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 9];
    let mut filled = 0;
    while filled < header.len() {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a frame header of kind {} claims {len} bytes, more than the {MAX_FRAME} a \
                 frame can hold: the worker's output is corrupt",
                header[0]
            ),
        ));
    }
    let mut payload = Vec::with_capacity(len.min(FIRST_ALLOCATION) as usize);
    let mut rest = input.take(len);
    (&mut rest)
        .take(FIRST_ALLOCATION)
        .read_to_end(&mut payload)?;
    if payload.len() as u64 == FIRST_ALLOCATION && len > FIRST_ALLOCATION {
        payload.reserve_exact((len - FIRST_ALLOCATION) as usize);
        rest.read_to_end(&mut payload)?;
    }
    if payload.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some((header[0], payload)))
}

/// `batch` as an Arrow IPC stream.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int32Array, RecordBatch};
/// use rillet_processes::protocol::{decode_batch, encode_batch};
/// let batch = RecordBatch::try_from_iter([("x", Arc::new(Int32Array::from(vec![1, 2])) as _)]).unwrap();
/// assert_eq!(decode_batch(encode_batch(&batch).unwrap()).unwrap(), batch);
/// ```
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// The one batch of an Arrow IPC stream (its buffers point into `bytes`, not copied).
/// Bytes that are not one (a process's corrupt reply) are an error, never a panic.
pub fn decode_batch(bytes: Vec<u8>) -> Result<RecordBatch> {
    let mut buffer = Buffer::from_vec(bytes);
    let batches = rillet_operator::stream::guard_ipc(|| {
        let mut decoder = StreamDecoder::new();
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            if let Some(batch) = decoder.decode(&mut buffer)? {
                batches.push(batch);
            }
        }
        decoder.finish()?;
        Ok(batches)
    })?;
    match <[RecordBatch; 1]>::try_from(batches) {
        Ok([batch]) => Ok(batch),
        Err(batches) if batches.is_empty() => Err(RilletError::internal(
            "a worker replied with a stream without a batch",
        )),
        Err(_) => Err(RilletError::internal(
            "a worker replied with more than one batch",
        )),
    }
}

/// Fuzzing entry point (not an API): read frames from `data` until it ends or breaks,
/// decoding each result frame's batch; whether all of it was read and decoded. Any
/// outcome but a panic is fine.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) -> bool {
    let mut input = data;
    let mut decoded = true;
    loop {
        match read_frame(&mut input) {
            Ok(Some((RESULT, payload))) => decoded &= decode_batch(payload).is_ok(),
            Ok(Some(_)) => {}
            Ok(None) => return decoded,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_frames_corpus_replays_without_a_panic() {
        rillet_common::fuzzing::replay("worker_frames", fuzz_frames);
    }

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, CALL, b"hello").unwrap();
        write_frame(&mut wire, READY, b"").unwrap();
        let mut input = &wire[..];
        assert_eq!(
            read_frame(&mut input).unwrap(),
            Some((CALL, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut input).unwrap(), Some((READY, Vec::new())));
        assert_eq!(read_frame(&mut input).unwrap(), None);
        let mut cut = &wire[..7];
        assert!(read_frame(&mut cut).is_err());
        let mut cut = &wire[..12];
        assert!(read_frame(&mut cut).is_err());
    }

    #[test]
    fn a_frame_longer_than_the_first_allocation_arrives_whole() {
        let big: Vec<u8> = (0..FIRST_ALLOCATION as usize + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut wire = Vec::new();
        write_frame(&mut wire, RESULT, &big).unwrap();
        let (kind, payload) = read_frame(&mut &wire[..]).unwrap().unwrap();
        assert_eq!((kind, payload.len()), (RESULT, big.len()));
        assert!(payload == big);
        assert_eq!(
            payload.capacity(),
            big.len(),
            "allocated once, to its length"
        );
        let cut = &wire[..wire.len() - 1];
        assert!(read_frame(&mut &cut[..]).is_err());
    }

    #[test]
    fn a_lying_length_costs_only_the_bytes_sent() {
        // 512 GiB claimed, 7 bytes sent: an error, not an allocation of the claim.
        let mut wire = vec![RESULT];
        wire.extend_from_slice(&(1u64 << 39).to_le_bytes());
        wire.extend_from_slice(b"garbage");
        let error = read_frame(&mut &wire[..]).unwrap_err();
        assert!(error.to_string().contains("more than"), "{error}");
        wire[1..9].copy_from_slice(&(MAX_FRAME - 1).to_le_bytes());
        let error = read_frame(&mut &wire[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
