//! Framing of sync messages on QUIC streams, and the compressed snapshot frame.
//!
//! A message on a control stream is a 4-byte big-endian length followed by that many bytes of
//! protobuf. The length is checked against a limit before anything is allocated, so a peer
//! cannot make the receiver reserve more memory than the limit by announcing a huge frame.
//!
//! A full snapshot travels alone on a unidirectional stream as one framed [`SnapshotFrame`]:
//! the protobuf [`wire::Snapshot`] compressed with zstd, and its uncompressed size, which the
//! receiver checks against its limit before it inflates anything (a zip bomb is refused, not
//! decompressed).

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sync::v1 as wire;

/// The largest control message accepted: a delta of many resources with certificates.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The largest uncompressed snapshot accepted (about 500,000 small routes).
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;
/// zstd level for snapshots: fast enough to compress 10,000 routes in milliseconds, and JSON
/// specs shrink several times over.
const ZSTD_LEVEL: i32 = 3;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a new frame began.
    #[error("the stream ended")]
    Closed,
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("a {what} of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("the {what} does not decode: {reason}")]
    Decode { what: &'static str, reason: String },
}

/// Writes one length-prefixed message.
pub async fn write_message<W, M>(out: &mut W, message: &M) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    M: Message,
{
    let body = message.encode_to_vec();
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge {
            what: "message",
            size: body.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame).await?;
    Ok(())
}

/// Reads one length-prefixed message; [`FrameError::Closed`] when the stream ended between
/// frames (a clean end), an IO error when it ended inside one.
pub async fn read_message<R, M>(input: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: Message + Default,
{
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(len) as usize;
    if size > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge {
            what: "message",
            size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let mut body = vec![0u8; size];
    input.read_exact(&mut body).await?;
    M::decode(body.as_slice()).map_err(|e| FrameError::Decode {
        what: "message",
        reason: e.to_string(),
    })
}

/// Reads messages from `input` on a task of their own and hands each one over the returned
/// channel; the last item is the error that ended the stream ([`FrameError::Closed`] for a clean
/// end). Reading a frame is not cancel-safe, so a session that waits on messages and on other
/// events at once (`select!`) reads through this. Abort the handle when the session ends.
pub fn spawn_reader<R, M>(
    mut input: R,
) -> (
    tokio::sync::mpsc::Receiver<Result<M, FrameError>>,
    tokio::task::JoinHandle<()>,
)
where
    R: AsyncRead + Unpin + Send + 'static,
    M: Message + Default + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let message = read_message::<_, M>(&mut input).await;
            let end = message.is_err();
            if tx.send(message).await.is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}

/// Compresses a snapshot into its frame. CPU-bound: run it off the async workers for big
/// snapshots.
pub fn compress_snapshot(snapshot: &wire::Snapshot) -> Result<wire::SnapshotFrame, FrameError> {
    let raw = snapshot.encode_to_vec();
    if raw.len() > MAX_SNAPSHOT_BYTES {
        return Err(FrameError::TooLarge {
            what: "snapshot",
            size: raw.len(),
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    let zstd = zstd::bulk::compress(&raw, ZSTD_LEVEL)?;
    Ok(wire::SnapshotFrame {
        uncompressed_bytes: raw.len() as u64,
        zstd,
    })
}

/// Inflates and decodes a snapshot frame, refusing one that announces (or turns out) larger
/// than [`MAX_SNAPSHOT_BYTES`].
pub fn decompress_snapshot(frame: &wire::SnapshotFrame) -> Result<wire::Snapshot, FrameError> {
    let size = usize::try_from(frame.uncompressed_bytes).unwrap_or(usize::MAX);
    if size > MAX_SNAPSHOT_BYTES {
        return Err(FrameError::TooLarge {
            what: "snapshot",
            size,
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    // `decompress` never writes more than `size` bytes: a frame that lies about its size
    // fails here instead of inflating without bound.
    let raw = zstd::bulk::decompress(&frame.zstd, size).map_err(|e| FrameError::Decode {
        what: "snapshot",
        reason: e.to_string(),
    })?;
    if raw.len() != size {
        return Err(FrameError::Decode {
            what: "snapshot",
            reason: format!("it inflates to {} bytes, but announces {size}", raw.len()),
        });
    }
    wire::Snapshot::decode(raw.as_slice()).map_err(|e| FrameError::Decode {
        what: "snapshot",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snapshot(routes: usize) -> wire::Snapshot {
        wire::Snapshot {
            revision: 7,
            resources: (0..routes)
                .map(|i| wire::Resource {
                    kind: wire::Kind::Route as i32,
                    name: format!("route-{i}"),
                    spec_json: format!(r#"{{"hosts":["h{i}.example.com"]}}"#).into_bytes(),
                    ..Default::default()
                })
                .collect(),
            checksum: String::new(),
        }
    }

    #[tokio::test]
    async fn messages_round_trip_and_a_clean_end_is_reported_as_closed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let ping = wire::AgentMessage {
            body: Some(wire::agent_message::Body::Ping(wire::Ping { nonce: 42 })),
        };
        write_message(&mut a, &ping).await.unwrap();
        write_message(&mut a, &ping).await.unwrap();
        drop(a);
        let first: wire::AgentMessage = read_message(&mut b).await.unwrap();
        assert_eq!(first, ping);
        let _: wire::AgentMessage = read_message(&mut b).await.unwrap();
        let end = read_message::<_, wire::AgentMessage>(&mut b).await;
        assert!(matches!(end, Err(FrameError::Closed)), "{end:?}");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let result = read_message::<_, wire::AgentMessage>(&mut b).await;
        assert!(
            matches!(result, Err(FrameError::TooLarge { size, .. }) if size == u32::MAX as usize),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_clean_end() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let result = read_message::<_, wire::AgentMessage>(&mut b).await;
        assert!(matches!(result, Err(FrameError::Io(_))), "{result:?}");
    }

    #[test]
    fn snapshots_compress_and_inflate_to_the_same_message() {
        let original = snapshot(2000);
        let frame = compress_snapshot(&original).unwrap();
        assert!(
            frame.zstd.len() * 4 < frame.uncompressed_bytes as usize,
            "{} compressed vs {} raw",
            frame.zstd.len(),
            frame.uncompressed_bytes
        );
        assert_eq!(decompress_snapshot(&frame).unwrap(), original);
    }

    #[test]
    fn a_frame_that_lies_about_its_size_is_refused() {
        let mut frame = compress_snapshot(&snapshot(100)).unwrap();
        frame.uncompressed_bytes /= 2;
        assert!(matches!(
            decompress_snapshot(&frame),
            Err(FrameError::Decode { .. })
        ));
        frame.uncompressed_bytes = u64::MAX;
        assert!(matches!(
            decompress_snapshot(&frame),
            Err(FrameError::TooLarge { .. })
        ));
        frame.uncompressed_bytes = 10;
        frame.zstd = vec![0xff; 50];
        assert!(matches!(
            decompress_snapshot(&frame),
            Err(FrameError::Decode { .. })
        ));
    }
}
