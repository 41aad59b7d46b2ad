//! The request body as the proxy forwards it: the client's stream, possibly with a prefix
//! that the policy chain already read (to check a size, a signature or a WAF rule) put back
//! in front. The agent's own HTTP/1.1 server reads a request without a body as
//! [`Inbound::Empty`] and one with a small body as [`Inbound::buffered`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::BoxError;

/// A request body: as received, or a prefix already read followed by the rest.
#[derive(Debug)]
pub enum Inbound {
    /// No body: a request without one, as the agent's own HTTP/1.1 server reads it.
    Empty,
    Incoming(Incoming),
    Prefixed {
        prefix: Option<Bytes>,
        rest: Option<Incoming>,
    },
}

/// What reading a prefix found.
#[derive(Debug)]
pub struct ReadPrefix {
    /// At most `limit` bytes.
    pub prefix: Bytes,
    /// Whether the prefix is the whole body.
    pub complete: bool,
}

impl Inbound {
    /// A body that is all here already.
    pub fn buffered(bytes: Bytes) -> Self {
        Inbound::Prefixed {
            prefix: Some(bytes),
            rest: None,
        }
    }

    /// Reads up to `limit` bytes of the body and returns them with a body that yields them
    /// again followed by whatever was not read. A body that is all here already is not copied.
    pub async fn read_prefix_of(self, limit: u64) -> Result<(ReadPrefix, Inbound), BoxError> {
        match self {
            Inbound::Incoming(body) => Self::read_prefix(body, limit).await,
            Inbound::Prefixed {
                prefix: Some(bytes),
                rest: None,
            } => {
                let complete = bytes.len() as u64 <= limit;
                let prefix = bytes.slice(..bytes.len().min(limit as usize));
                Ok((ReadPrefix { prefix, complete }, Inbound::buffered(bytes)))
            }
            other => Ok((
                ReadPrefix {
                    prefix: Bytes::new(),
                    complete: other.is_end_stream(),
                },
                other,
            )),
        }
    }

    /// Reads up to `limit` bytes of `body` and returns them with a body that yields them again
    /// followed by whatever was not read.
    async fn read_prefix(
        mut body: Incoming,
        limit: u64,
    ) -> Result<(ReadPrefix, Inbound), BoxError> {
        let mut buffer = Vec::new();
        let mut overflow: Option<Bytes> = None;
        while (buffer.len() as u64) < limit {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(Box::new(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = (limit as usize).saturating_sub(buffer.len());
                        if data.len() > room {
                            buffer.extend_from_slice(&data[..room]);
                            overflow = Some(data.slice(room..));
                        } else {
                            buffer.extend_from_slice(&data);
                        }
                    }
                }
            }
        }
        let complete = overflow.is_none() && body.is_end_stream();
        let prefix = Bytes::from(buffer);
        let mut replay = prefix.to_vec();
        if let Some(extra) = overflow {
            replay.extend_from_slice(&extra);
        }
        let rest = (!body.is_end_stream()).then_some(body);
        let inbound = Inbound::Prefixed {
            prefix: (!replay.is_empty()).then(|| Bytes::from(replay)),
            rest,
        };
        Ok((ReadPrefix { prefix, complete }, inbound))
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Empty => Poll::Ready(None),
            Inbound::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Inbound::Prefixed { prefix, rest } => {
                if let Some(bytes) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                match rest {
                    Some(body) => Pin::new(body)
                        .poll_frame(cx)
                        .map_err(|e| Box::new(e) as BoxError),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Incoming(body) => body.is_end_stream(),
            Inbound::Prefixed { prefix, rest } => {
                prefix.is_none() && rest.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Incoming(body) => body.size_hint(),
            Inbound::Prefixed { prefix, rest } => {
                let head = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let tail = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), Body::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(head + tail.lower());
                if let Some(upper) = tail.upper() {
                    hint.set_upper(head + upper);
                }
                hint
            }
        }
    }
}
