//! HTTP/1.1 wire pieces shared by both sides of the proxy: the upstream client
//! ([`crate::upstream`]'s `h1`) and the downstream server ([`crate::server`]'s `h1`).
//!
//! - [`Spans`]: where a parsed head's fields sit in the bytes they were parsed from, so that a
//!   `HeaderMap` can hold slices of those bytes instead of copies.
//! - [`RawFields`]: an upstream response's fields left as parsed, for the agent's own server to
//!   write without a `HeaderMap` built and read back in between.
//! - [`BodyWriter`]: a message body going out framed by `Content-Length` or chunked, with the
//!   head in front of it so that a head and a body that is ready leave in one write.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::Body;
use tokio::io::AsyncWrite;

use crate::BoxError;

/// The most header fields a head (or a trailer section) may have.
pub const MAX_HEADERS: usize = 128;

/// Bytes a writer gathers from a ready body before it writes them out.
const GATHER_LIMIT: usize = 64 * 1024;

/// How a message body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body bytes at all (an empty request, a HEAD or 204 response).
    None,
    /// Exactly this many bytes, announced by `Content-Length`.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Appends `name: value` and the line end.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Folds one `Content-Length` field value (a number, or a list of equal numbers, RFC 9112 6.3)
/// into the length the fields before it gave (`known`).
pub fn content_length(known: Option<u64>, value: &[u8]) -> Result<Option<u64>, String> {
    let mut length = known;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        let parsed = std::str::from_utf8(part)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                )
            })?;
        if length.is_some_and(|l| l != parsed) {
            return Err("conflicting Content-Length values".into());
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// Appends `content-length: LENGTH`.
pub fn push_length(out: &mut Vec<u8>, length: u64) {
    push_field(
        out,
        b"content-length",
        itoa::Buffer::new().format(length).as_bytes(),
    );
}

/// Where each parsed field's name and value sit in the bytes they were parsed from, so the
/// values can be slices of those bytes once frozen.
/// Heads and trailer sections are under 64 KiB, so offsets fit in 16 bits.
#[derive(Clone)]
pub struct Spans {
    spans: [(u16, u16, u16, u16); MAX_HEADERS],
    len: usize,
}

impl Spans {
    /// The spans of `fields`, all slices of `base`.
    pub fn of<'h, 'b: 'h>(
        base: &[u8],
        fields: impl Iterator<Item = &'h httparse::Header<'b>>,
    ) -> Self {
        let start = base.as_ptr() as usize;
        let offset = |part: &[u8]| (part.as_ptr() as usize - start) as u16;
        let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
        let mut len = 0;
        for (span, field) in spans.iter_mut().zip(fields) {
            len += 1;
            let name = offset(field.name.as_bytes());
            let value = offset(field.value);
            *span = (
                name,
                name + field.name.len() as u16,
                value,
                value + field.value.len() as u16,
            );
        }
        Self { spans, len }
    }

    /// The fields as a map whose values share `block`, the frozen bytes the spans index, with
    /// room for `spare` more before an insert has to grow (and rehash) it.
    pub fn header_map(&self, block: &Bytes, spare: usize) -> Result<HeaderMap, BoxError> {
        let mut map = HeaderMap::with_capacity(self.len + spare);
        for &(name_start, name_end, value_start, value_end) in &self.spans[..self.len] {
            let name = &block[name_start as usize..name_end as usize];
            let name = HeaderName::from_bytes(name)
                .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(name)))?;
            let value = HeaderValue::from_maybe_shared(
                block.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| format!("invalid value for header {name}"))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// An upstream response's end-to-end fields as its head carried them: the head's bytes and where
/// each field sits in them. The HTTP/1.1 client leaves them in the response's extensions, with
/// its `HeaderMap` holding only what the proxy adds later (`X-Request-Id`, a policy's fields);
/// the agent's own server writes both, a raw field only where the map has no field of its name
/// (the proxy's fields replace the upstream's, as an insert into one map would). Whatever must
/// read or edit the upstream's fields, or write them another way (hyper: HTTP/2, handed-over
/// connections), calls [`materialize`] first.
#[derive(Clone)]
pub struct RawFields {
    block: Bytes,
    spans: Box<Spans>,
}

impl std::fmt::Debug for RawFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFields")
            .field("fields", &self.spans.len)
            .finish()
    }
}

impl RawFields {
    /// `spans` index `block`, the frozen head they were parsed from.
    pub fn new(block: Bytes, spans: Spans) -> Self {
        Self {
            block,
            spans: Box::new(spans),
        }
    }

    /// Each field's name and value, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.spans[..self.spans.len].iter().map(
            |&(name_start, name_end, value_start, value_end)| {
                (
                    &self.block[name_start as usize..name_end as usize],
                    &self.block[value_start as usize..value_end as usize],
                )
            },
        )
    }
}

/// Moves a response's [`RawFields`], if it has any, into its header map: the upstream's fields
/// first, then the map's own, which replace upstream fields of the same name.
pub fn materialize<B>(response: &mut http::Response<B>) {
    let Some(raw) = response.extensions_mut().remove::<RawFields>() else {
        return;
    };
    let headers = response.headers_mut();
    match raw.spans.header_map(&raw.block, headers.len()) {
        Ok(mut upstream) => {
            upstream.extend(std::mem::take(headers));
            *headers = upstream;
        }
        // Not reached: the client parsed these with the same checks; if it were, the
        // upstream's fields are dropped rather than sent unchecked.
        Err(error) => tracing::warn!("upstream response fields dropped: {error}"),
    }
}

/// Which message a body belongs to: a request's trailers are dropped (upstreams rarely
/// expect them), a response's are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A client's request going upstream.
    Request,
    /// A response going to the client.
    Response,
}

impl Message {
    fn body(self) -> &'static str {
        match self {
            Message::Request => "the client's request body",
            Message::Response => "the response body",
        }
    }
}

/// Why a body stopped going out.
pub enum SendError {
    /// The body itself failed (its source went away, or it gave more or fewer bytes than it
    /// announced).
    Body(BoxError),
    /// The peer stopped taking bytes.
    Write(io::Error),
}

/// A body on its way out: what is left of it, and bytes framed but not yet written.
pub struct BodyWriter<B> {
    body: B,
    chunked: bool,
    message: Message,
    /// Bytes still to come under `Content-Length`.
    remaining: u64,
    out: Vec<u8>,
    written: usize,
    ended: bool,
}

impl<B> BodyWriter<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// A writer that sends `out` (a head, or nothing) and then `body` framed as `framing`.
    /// With `Framing::None` the body is not read at all.
    pub fn new(body: B, framing: Framing, out: Vec<u8>, message: Message) -> Self {
        Self {
            body,
            chunked: framing == Framing::Chunked,
            message,
            remaining: match framing {
                Framing::Length(length) => length,
                _ => 0,
            },
            out,
            written: 0,
            ended: framing == Framing::None,
        }
    }

    /// The write buffer, for the next message once this one is done.
    pub fn into_buffer(self) -> Vec<u8> {
        self.out
    }

    /// Writes what the body gives until all of it has gone out (`Ready(Ok)`), or the socket or
    /// the body has to wait (`Pending`), or something fails. What the body has ready is
    /// gathered (up to 64 KiB) before a write, so a head and a small body leave together.
    pub fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            let mut body_waits = false;
            while !self.ended && self.out.len() - self.written < GATHER_LIMIT {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => {
                        body_waits = true;
                        break;
                    }
                    Poll::Ready(frame) => self.frame(frame)?,
                }
            }
            if self.written < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]))
                    .map_err(SendError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(SendError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
                continue;
            }
            if !self.out.is_empty() {
                // Flushed before waiting on the body: under TLS, written bytes may sit in the
                // session until then, and the peer would wait with us.
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(SendError::Write)?;
                self.out.clear();
                self.written = 0;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if body_waits {
                // The body's own poll registered this task's waker.
                return Poll::Pending;
            }
        }
    }

    /// Frames what one poll of the body gave into the write buffer.
    fn frame(
        &mut self,
        frame: Option<Result<hyper::body::Frame<Bytes>, B::Error>>,
    ) -> Result<(), SendError> {
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if self.chunked => {
                    // Into the buffer directly: no string per chunk.
                    let _ = write!(self.out, "{:x}\r\n", data.len());
                    self.out.extend_from_slice(&data);
                    self.out.extend_from_slice(b"\r\n");
                }
                Ok(data) => {
                    self.remaining =
                        self.remaining
                            .checked_sub(data.len() as u64)
                            .ok_or_else(|| {
                                SendError::Body(
                                    format!(
                                        "{} is longer than its announced length",
                                        self.message.body()
                                    )
                                    .into(),
                                )
                            })?;
                    self.out.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let (true, true, Ok(fields)) = (
                        self.chunked,
                        self.message == Message::Response,
                        frame.into_trailers(),
                    ) {
                        self.out.extend_from_slice(b"0\r\n");
                        for (name, value) in &fields {
                            push_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                        }
                        self.out.extend_from_slice(b"\r\n");
                        self.ended = true;
                    }
                }
            },
            Some(Err(error)) => {
                return Err(SendError::Body(
                    format!("reading {}: {error}", self.message.body()).into(),
                ));
            }
            None => {
                if self.chunked {
                    self.out.extend_from_slice(b"0\r\n\r\n");
                } else if self.remaining != 0 {
                    return Err(SendError::Body(
                        format!("{} ended before its announced length", self.message.body()).into(),
                    ));
                }
                self.ended = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fields of a response head given as text, left raw as the h1 client leaves them.
    pub(crate) fn raw_fields(fields: &str) -> RawFields {
        let head = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut parsed);
        let httparse::Status::Complete(len) = response.parse(head.as_bytes()).unwrap() else {
            panic!("incomplete head");
        };
        let spans = Spans::of(head.as_bytes(), response.headers.iter());
        RawFields::new(Bytes::copy_from_slice(&head.as_bytes()[..len]), spans)
    }

    #[test]
    fn materialized_fields_come_first_and_the_maps_own_replace_theirs() {
        let mut response = http::Response::new(());
        response.extensions_mut().insert(raw_fields(
            "Content-Type: text/plain\r\nX-Request-Id: upstream\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        ));
        response
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("ours"));
        materialize(&mut response);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/plain");
        let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["ours"]);
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(response.extensions().get::<RawFields>().is_none());
        // Again: nothing left to move.
        materialize(&mut response);
        assert_eq!(response.headers().len(), 4);
    }
}
