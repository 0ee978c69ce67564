//! Response bodies: in-memory bytes, or a file range streamed through a small bounded channel so memory does not
//! grow with file size. Faulted bodies (reset, truncated) are streamed the same way and stop early.
//!
//! A reset works by setting the connection's `reset` flag and failing the body: hyper then drops the connection,
//! and the connection wrapper in `server` turns that drop into a TCP RST (`SO_LINGER` 0). A truncated body just ends
//! early; hyper notices it is short of the announced `Content-Length` and closes the connection normally (FIN).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::faults::BodyFault;

/// Chunk size for file bodies.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered between the file reader and the socket.
const CHANNEL_DEPTH: usize = 4;
/// Pause between the last bytes of a faulted body and the fault itself, so the bytes reach the client first.
const FAULT_PAUSE: Duration = Duration::from_millis(50);

/// What a handler wants to send, before faults and `HEAD` are applied.
#[derive(Debug)]
pub(crate) enum Payload {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of the file at `path` from offset `start`.
    File {
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }
}

/// The body type of every response.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<io::Result<Bytes>>),
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// The body for `payload`; with `fault`, only the first `cut` bytes are sent before it strikes.
    pub fn new(payload: Payload, fault: Option<(BodyFault, u64)>, reset_flag: Arc<AtomicBool>) -> Body {
        match (payload, fault) {
            (Payload::Empty, _) => Body::Full(None),
            (Payload::Bytes(b), None) => Body::Full(Some(b)),
            (payload, fault) => {
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                tokio::spawn(feed(payload, fault, reset_flag, tx));
                Body::Stream(rx)
            }
        }
    }
}

async fn feed(
    payload: Payload,
    fault: Option<(BodyFault, u64)>,
    reset_flag: Arc<AtomicBool>,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let limit = fault.map_or(payload.len(), |(_, cut)| cut.min(payload.len()));
    let sent = match payload {
        Payload::Empty => Ok(()),
        Payload::Bytes(b) => {
            let upto = usize::try_from(limit).unwrap_or(b.len()).min(b.len());
            tx.send(Ok(b.slice(..upto))).await.map_err(|_| ())
        }
        Payload::File { path, start, .. } => send_file(&path, start, limit, &tx).await,
    };
    if sent.is_err() {
        // The client went away, or the file could not be read (already reported in the stream).
        return;
    }
    if let Some((kind, _)) = fault {
        tokio::time::sleep(FAULT_PAUSE).await;
        match kind {
            BodyFault::Reset => {
                reset_flag.store(true, Ordering::SeqCst);
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "injected reset"))).await;
            }
            // Dropping the sender ends the body short of its Content-Length.
            BodyFault::Truncate => drop(tx),
        }
    }
}

async fn send_file(path: &PathBuf, start: u64, len: u64, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<(), ()> {
    let opened = async {
        let mut file = tokio::fs::File::open(path).await?;
        file.seek(io::SeekFrom::Start(start)).await?;
        Ok::<_, io::Error>(file)
    };
    let mut file = match opened.await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return Err(());
        }
    };
    let mut remaining = len;
    while remaining > 0 {
        let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while serving"))).await;
                return Err(());
            }
            Ok(n) => {
                buf.truncate(n);
                remaining -= n as u64;
                tx.send(Ok(Bytes::from(buf))).await.map_err(|_| ())?;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
        }
    }
    Ok(())
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            // Streams announce their length in the Content-Length header, which hyper honours.
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
