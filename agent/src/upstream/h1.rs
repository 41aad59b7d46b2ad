//! The client side of HTTP/1.1 on an upstream connection, run on the request's own task.
//!
//! hyper's client connection is a task of its own that talks to the request through a
//! channel, so every exchange crossed two tasks and a channel each way. Here the request's
//! task writes the request and reads the response head itself, and the response body reads
//! the socket as it is polled. Between exchanges a connection is a socket and a read buffer
//! in the pool, with no task: that the upstream closed it is seen, without a syscall, from the
//! reactor's readiness when it is next taken ([`Conn::still_open`]).
//!
//! Framing follows RFC 9112: a request body goes out with `Content-Length` when its size is
//! known and chunked otherwise; a response body is empty (HEAD, 1xx, 204, 304), chunked,
//! sized by `Content-Length`, or delimited by the connection's close. Interim 1xx responses
//! other than 101 are skipped; a 101 hands the socket, with any bytes read past the head, to
//! the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Method, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::clients::UpstreamBody;
use super::connector::UpstreamStream;
use crate::BoxError;
use crate::headers::Added;
use crate::wire::{
    BodyWriter, Framing, MAX_HEADERS, Message, RawFields, SendError, Spans, content_length,
    push_field, push_length,
};

/// The largest response head accepted; a bigger one is a 502.
const MAX_HEAD: usize = 64 * 1024;
/// The largest chunk-size line (size and extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// The most interim (1xx) responses accepted before the final one.
const MAX_INTERIM: usize = 32;
/// How much room a read asks for: a response head and a small body in one read.
const READ_SIZE: usize = 16 * 1024;

/// An open HTTP/1.1 connection to an upstream endpoint, between exchanges or in one.
pub(super) struct Conn {
    io: UpstreamStream,
    /// Bytes read from the socket and not yet consumed.
    read: BytesMut,
    /// Where request heads are encoded; kept with its capacity from one exchange to the next.
    write: Vec<u8>,
}

/// Writes the request head for `parts` into `out` and says how its body will be framed.
/// The framing headers are ours, from the body's size: a `Content-Length` or
/// `Transfer-Encoding` in `parts` is not copied. A request without `Host` gets the endpoint's
/// authority (RFC 9112 3.2 requires one).
fn encode_request(
    parts: &http::request::Parts,
    added: &Added<'_>,
    body: &UpstreamBody,
    authority: &Authority,
    out: &mut Vec<u8>,
) -> Framing {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(target) if !target.as_str().is_empty() => {
            out.extend_from_slice(target.as_str().as_bytes())
        }
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !added.has_host() && !parts.headers.contains_key(header::HOST) {
        push_field(out, b"host", authority.as_str().as_bytes());
    }
    let framing = if body.is_end_stream() {
        // An empty body is only announced where the method implies one, as clients do.
        if parts.headers.contains_key(header::CONTENT_LENGTH)
            || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        {
            push_field(out, b"content-length", b"0");
        }
        Framing::None
    } else if let Some(length) = body.size_hint().exact() {
        push_length(out, length);
        Framing::Length(length)
    } else {
        push_field(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in added.fields() {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// A response head: status, version, header fields and what its framing fields say.
struct Head {
    status: StatusCode,
    version: Version,
    /// The end-to-end fields: the hop-by-hop ones (RFC 9110 7.6.1), those `Connection` names
    /// and, beside `Transfer-Encoding`, `Content-Length` describe this connection only and
    /// are left out (which spares building and then stripping them). A 101 keeps every
    /// field: its tunnel needs `Connection` and `Upgrade`.
    fields: Fields,
    framing: FramingFields,
}

/// A response head's fields: in a map, or left as parsed ([`RawFields`]) when the caller
/// forwards them as they are.
enum Fields {
    Map(HeaderMap),
    Raw(RawFields),
}

/// What a response head's framing fields say, read off the raw fields (RFC 9112 6.3).
#[derive(Debug)]
struct FramingFields {
    /// `Connection` lists `close`; lists `keep-alive`.
    close: bool,
    keep_alive: bool,
    /// Whether `Transfer-Encoding` is present, and its final coding when every value is text.
    transfer_encoding: bool,
    final_coding_chunked: bool,
    /// Whether `Content-Length` is present, and its value, or what is wrong with it.
    has_content_length: bool,
    content_length: Result<Option<u64>, String>,
    /// `Connection` names a field other than the hop-by-hop ones.
    lists_other_fields: bool,
}

impl FramingFields {
    fn of(fields: &[httparse::Header<'_>]) -> Self {
        let mut framing = FramingFields {
            close: false,
            keep_alive: false,
            transfer_encoding: false,
            final_coding_chunked: false,
            has_content_length: false,
            content_length: Ok(None),
            lists_other_fields: false,
        };
        let mut codings_text = true;
        let mut final_coding = None;
        for field in fields {
            let name = field.name;
            if name.eq_ignore_ascii_case("connection") {
                for token in crate::headers::field_items(field.value) {
                    if token.eq_ignore_ascii_case("close") {
                        framing.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        framing.keep_alive = true;
                    } else if !is_hop_by_hop(token) {
                        framing.lists_other_fields = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                framing.transfer_encoding = true;
                match crate::headers::field_text(field.value) {
                    Some(_) => {
                        if let Some(last) = crate::headers::field_items(field.value).next_back() {
                            final_coding = Some(last);
                        }
                    }
                    None => codings_text = false,
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                framing.has_content_length = true;
                if let Ok(known) = &framing.content_length {
                    framing.content_length = content_length(*known, field.value);
                }
            }
        }
        framing.final_coding_chunked =
            codings_text && final_coding.is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        framing
    }

    /// Whether a field of a (non-101) response is left out of its map.
    fn leaves_out(&self, name: &str, fields: &[httparse::Header<'_>]) -> bool {
        is_hop_by_hop(name)
            || (self.transfer_encoding && name.eq_ignore_ascii_case("content-length"))
            || (self.lists_other_fields
                && fields
                    .iter()
                    .filter(|f| f.name.eq_ignore_ascii_case("connection"))
                    .flat_map(|f| crate::headers::field_items(f.value))
                    .any(|token| token.eq_ignore_ascii_case(name)))
    }
}

/// Whether a raw field name is one of `headers::HOP_BY_HOP`, in any case.
fn is_hop_by_hop(name: &str) -> bool {
    crate::headers::HOP_BY_HOP
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// How an exchange failed.
pub(super) enum Failure {
    /// The request head could not be written, so the upstream saw no complete request; the
    /// body, not read from, comes back for another connection.
    Unsent {
        error: io::Error,
        body: UpstreamBody,
    },
    /// The request went out, and the connection ended before any byte of a response.
    NoResponse(BoxError),
    /// Anything else: a malformed or cut-short response head, a request body that failed.
    Failed(BoxError),
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unsent { error, .. } => write!(f, "Unsent({error})"),
            Failure::NoResponse(error) => write!(f, "NoResponse({error})"),
            Failure::Failed(error) => write!(f, "Failed({error})"),
        }
    }
}

impl Failure {
    pub(super) fn into_error(self) -> BoxError {
        match self {
            Failure::Unsent { error, .. } => Box::new(error),
            Failure::NoResponse(error) | Failure::Failed(error) => error,
        }
    }
}

impl Conn {
    pub(super) fn new(io: UpstreamStream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection can carry a request, asked as it leaves the pool. The
    /// reactor marks the socket readable when the upstream sent anything, its close included;
    /// an idle connection that is not readable is open, and costs no syscall to ask. When it
    /// is, a read settles it: nothing to read (the mark was left by the last response) is
    /// open; an end or bytes nobody asked for are not.
    pub(super) fn still_open(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                Pin::new(&mut self.io)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// Sends a request to `authority` (origin-form target in `parts`) and reads the response
    /// head. The response body reads the rest from the connection, which it owns. With
    /// `raw_fields`, a final response other than a 101 keeps its fields as [`RawFields`] in
    /// its extensions instead of a header map.
    pub(super) async fn exchange(
        mut self,
        raw_fields: bool,
        parts: &http::request::Parts,
        added: &Added<'_>,
        authority: &Authority,
        body: UpstreamBody,
    ) -> Result<http::Response<ResponseBody>, Failure> {
        let mut head = std::mem::take(&mut self.write);
        head.clear();
        let framing = encode_request(parts, added, &body, authority, &mut head);
        let written = self.write_all(&head).await;
        self.write = head;
        if let Err(error) = written {
            return Err(Failure::Unsent { error, body });
        }
        let method = &parts.method;
        // The body goes out until it is done or the upstream answers first. A write that
        // fails (the upstream answered and closed) stops the body; the answer, if one came,
        // is still read.
        let mut sending = (framing != Framing::None)
            .then(|| BodyWriter::new(body, framing, Vec::new(), Message::Request));
        let mut write_error = None;
        if let Some(body) = &mut sending {
            match self.send_body(body).await.map_err(Failure::Failed)? {
                Sent::All => sending = None,
                Sent::Answered => {}
                Sent::WriteFailed(error) => {
                    write_error = Some(error);
                    sending = None;
                }
            }
        }
        let complete = sending.is_none() && write_error.is_none();
        let mut interim = 0;
        let mut received = false;
        let head = loop {
            match parse_head(&mut self.read, raw_fields).map_err(Failure::Failed)? {
                // Interim responses (100 Continue, 103 Early Hints) are not forwarded.
                Some(head) if is_interim(head.status.as_u16()) => {
                    received = true;
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(Failure::Failed(
                            format!("the upstream sent more than {MAX_INTERIM} interim responses")
                                .into(),
                        ));
                    }
                    continue;
                }
                Some(head) => break head,
                None => {}
            }
            if self.read.len() >= MAX_HEAD {
                return Err(Failure::Failed(
                    format!("the response head is larger than {} KiB", MAX_HEAD / 1024).into(),
                ));
            }
            let nothing_yet = !received && self.read.is_empty();
            let failure = |error: BoxError| {
                if let Some(write_error) = &write_error {
                    // No answer came after the body failed to go out: that failure says more.
                    Failure::Failed(format!("sending the request body: {write_error}").into())
                } else if nothing_yet {
                    Failure::NoResponse(error)
                } else {
                    Failure::Failed(error)
                }
            };
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if nothing_yet => {
                    return Err(failure(
                        "the upstream closed the connection without responding".into(),
                    ));
                }
                Ok(0) => {
                    return Err(failure(
                        "the upstream closed the connection in the middle of the response head"
                            .into(),
                    ));
                }
                Ok(_) => {}
                Err(error) => return Err(failure(Box::new(error))),
            }
        };
        let Head {
            status,
            version,
            fields,
            framing,
        } = head;
        let (reading, keep_alive) = if status == StatusCode::SWITCHING_PROTOCOLS {
            // RFC 9110 15.2.2: only a request that asked may be switched.
            if !crate::headers::is_upgrade(&parts.headers) {
                return Err(Failure::Failed(
                    "the upstream switched protocols on a request that did not ask to".into(),
                ));
            }
            (Reading::Switched, false)
        } else {
            response_framing(method, status, version, framing).map_err(Failure::Failed)?
        };
        // An early answer that refuses the request (a 413, a 401) ends the body there, as
        // nginx does; any other keeps the body going alongside the response (an upstream that
        // streams its answer while it reads, such as an echo), driven by the response body.
        if status.as_u16() >= 400 {
            sending = None;
        }
        let mut response = http::Response::new(ResponseBody {
            conn: self,
            reading,
            reusable: keep_alive && write_error.is_none(),
            request_sent: complete,
            sending,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        match fields {
            Fields::Map(headers) => *response.headers_mut() = headers,
            Fields::Raw(raw) => {
                response.extensions_mut().insert(raw);
            }
        }
        Ok(response)
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sends the request body until it has all gone out, the upstream answers (a final
    /// response head is buffered, or it closed), or a write fails. Only a failure of the
    /// client's own body is an error.
    async fn send_body(&mut self, body: &mut BodyWriter<UpstreamBody>) -> Result<Sent, BoxError> {
        std::future::poll_fn(|cx| {
            if self.poll_answered(cx) {
                return Poll::Ready(Ok(Sent::Answered));
            }
            match ready!(body.poll_send(&mut self.io, cx)) {
                Ok(()) => Poll::Ready(Ok(Sent::All)),
                Err(SendError::Write(error)) => Poll::Ready(Ok(Sent::WriteFailed(error))),
                Err(SendError::Body(error)) => Poll::Ready(Err(error)),
            }
        })
        .await
    }

    /// While a request body goes out: whether the upstream has already sent a final response
    /// head, or closed, or failed (the head read reports which). Reads what has arrived,
    /// never waits.
    fn poll_answered(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if final_head_buffered(&self.read) || self.read.len() >= MAX_HEAD {
                return true;
            }
            match self.poll_fill(cx) {
                Poll::Pending => return false,
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is the upstream's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// How sending a request body ended.
enum Sent {
    All,
    /// The upstream answered (or closed) first; what is left goes out alongside the response.
    Answered,
    WriteFailed(io::Error),
}

/// Whether a response with status `code` is interim, to be skipped: a 1xx other than 101,
/// which ends the exchange by switching protocols.
fn is_interim(code: u16) -> bool {
    (100..200).contains(&code) && code != 101
}

/// Whether `buf` starts with a complete final response head, after any interim ones.
fn final_head_buffered(buf: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &buf[at..],
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => match response.code {
                Some(code) if is_interim(code) => at += len,
                _ => return true,
            },
            Ok(httparse::Status::Partial) => return false,
            // Malformed: stop sending; the head read reports it.
            Err(_) => return true,
        }
    }
}

/// Parses a complete response head off the front of `buf`, or says more bytes are needed.
/// Header values are slices of the head's bytes, not copies; with `raw`, a final response's
/// fields other than a 101's stay as parsed.
fn parse_head(buf: &mut BytesMut, raw: bool) -> Result<Option<Head>, BoxError> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len >= MAX_HEAD => {
            return Err(format!("the response head is larger than {} KiB", MAX_HEAD / 1024).into());
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(
                format!("the response head has more than {MAX_HEADERS} header fields").into(),
            );
        }
        Err(error) => return Err(format!("malformed response head: {error}").into()),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or("malformed response head: bad status code")?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let fields = &*response.headers;
    let framing = FramingFields::of(fields);
    let spans = if status == StatusCode::SWITCHING_PROTOCOLS {
        Spans::of(buf, fields.iter())
    } else {
        Spans::of(
            buf,
            fields
                .iter()
                .filter(|field| !framing.leaves_out(field.name, fields)),
        )
    };
    let block = buf.split_to(len).freeze();
    let fields = if raw && !status.is_informational() {
        Fields::Raw(RawFields::new(block, spans))
    } else {
        Fields::Map(spans.header_map(&block, 0)?)
    };
    Ok(Some(Head {
        status,
        version,
        fields,
        framing,
    }))
}

/// How the response body is delimited (RFC 9112 6.3), and whether the connection may carry
/// another exchange after it.
fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    framing: FramingFields,
) -> Result<(Reading, bool), BoxError> {
    let mut keep_alive = if version == Version::HTTP_10 {
        framing.keep_alive
    } else {
        !framing.close
    };
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Reading::Done, keep_alive));
    }
    if framing.transfer_encoding {
        // Transfer-Encoding overrides Content-Length; a response with both is suspect, and
        // its connection is not reused.
        // So is Transfer-Encoding in an HTTP/1.0 response (RFC 9112 6.1).
        if framing.has_content_length || version == Version::HTTP_10 {
            keep_alive = false;
        }
        // A coding that is not text cannot be read as ending in chunked: read to the close.
        return Ok(if framing.final_coding_chunked {
            (Reading::Chunked(Chunk::Size), keep_alive)
        } else {
            (Reading::UntilClose, false)
        });
    }
    Ok(match framing.content_length? {
        Some(0) => (Reading::Done, keep_alive),
        Some(length) => (Reading::Length(length), keep_alive),
        None => (Reading::UntilClose, false),
    })
}

/// Where the response body stands.
#[derive(Debug)]
enum Reading {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes.
    UntilClose,
    /// After a 101: the connection carries another protocol.
    Switched,
    Done,
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    End,
}

/// What the chunked decoder took off the buffer.
#[derive(Debug)]
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Decodes the next piece of a chunked body off the front of `buf`: `None` when more bytes
/// are needed.
fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Option<Decoded>, BoxError> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = buf
                    .iter()
                    .take(MAX_CHUNK_LINE + 1)
                    .position(|&b| b == b'\n')
                else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("a chunk-size line is longer than 1 KiB".into());
                    }
                    return Ok(None);
                };
                let line = buf[..end]
                    .strip_suffix(b"\r")
                    .ok_or("a chunk-size line does not end with CRLF")?;
                let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                // Spaces and tabs may precede `;` (RFC 9112 7.1.1 BWS); leading zeros say
                // nothing.
                let significant = digits
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t')
                    .map_or(0, |i| i + 1);
                let digits = &digits[..significant];
                let start = digits
                    .iter()
                    .position(|&b| b != b'0')
                    .unwrap_or(digits.len().saturating_sub(1));
                let digits = &digits[start..];
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(format!(
                        "invalid chunk size {:?}",
                        String::from_utf8_lossy(digits)
                    )
                    .into());
                }
                let size = digits.iter().fold(0u64, |n, &d| {
                    n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64
                });
                buf.advance(end + 1);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(remaining) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = remaining.min(buf.len() as u64);
                let data = buf.split_to(take as usize).freeze();
                *state = if take == remaining {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(remaining - take)
                };
                return Ok(Some(Decoded::Data(data)));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data is not followed by CRLF".into());
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *state = Chunk::End;
                    return Ok(Some(Decoded::End));
                }
                if buf.len() < 2 {
                    return Ok(None);
                }
                let mut fields = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) if len <= MAX_TRAILERS => {
                        let spans = Spans::of(buf, fields.iter());
                        let block = buf.split_to(len).freeze();
                        *state = Chunk::End;
                        return Ok(Some(Decoded::Trailers(spans.header_map(&block, 0)?)));
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => return Ok(None),
                    Ok(_) => return Err("the trailer section is larger than 16 KiB".into()),
                    Err(error) => return Err(format!("malformed trailer section: {error}").into()),
                }
            }
            Chunk::End => return Ok(Some(Decoded::End)),
        }
    }
}

/// A response body read from its connection as it is polled.
pub(super) struct ResponseBody {
    conn: Conn,
    reading: Reading,
    /// Whether the response lets the connection carry another exchange.
    reusable: bool,
    /// Whether the request body has gone out whole.
    request_sent: bool,
    /// The rest of a request body the upstream answered before it ended, sent as the
    /// response body is read.
    sending: Option<BodyWriter<UpstreamBody>>,
}

impl ResponseBody {
    /// Whether the body has ended and its connection can carry another exchange: the response
    /// allowed it, the request went out whole, and the upstream sent nothing more.
    pub(super) fn reusable(&self) -> bool {
        matches!(self.reading, Reading::Done)
            && self.reusable
            && self.request_sent
            && self.conn.read.is_empty()
    }

    pub(super) fn into_conn(self) -> Conn {
        self.conn
    }

    /// After a 101: the connection, with any bytes the upstream sent past the head.
    pub(super) fn into_upgraded(self) -> Option<Upgraded> {
        matches!(self.reading, Reading::Switched).then(|| Upgraded {
            io: self.conn.io,
            pending: self.conn.read.freeze(),
        })
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(sending) = &mut self.sending {
            match sending.poll_send(&mut self.conn.io, cx) {
                Poll::Ready(Ok(())) => {
                    self.sending = None;
                    self.request_sent = true;
                }
                // The upstream stopped taking the body; its response still comes.
                Poll::Ready(Err(SendError::Write(_))) => self.sending = None,
                Poll::Ready(Err(SendError::Body(error))) => {
                    self.sending = None;
                    self.reading = Reading::Done;
                    self.reusable = false;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => {}
            }
        }
        let polled = self.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            self.reading = Reading::Done;
            self.reusable = false;
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let buffered = &mut self.conn.read;
            match &mut self.reading {
                Reading::Done | Reading::Switched => return Poll::Ready(None),
                Reading::Length(remaining) if !buffered.is_empty() => {
                    let take = (*remaining).min(buffered.len() as u64);
                    let data = buffered.split_to(take as usize).freeze();
                    *remaining -= take;
                    if *remaining == 0 {
                        self.reading = Reading::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::UntilClose if !buffered.is_empty() => {
                    let data = buffered.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Chunked(state) => match decode_chunked(state, buffered) {
                    Ok(Some(Decoded::Data(data))) => {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Some(Decoded::Trailers(trailers))) => {
                        // The end: hyper stops polling after trailers.
                        self.reading = Reading::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Some(Decoded::End)) => {
                        self.reading = Reading::Done;
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Some(Err(error))),
                },
                Reading::Length(_) | Reading::UntilClose => {}
            }
            // More bytes are needed.
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(match self.reading {
                        Reading::UntilClose => {
                            self.reading = Reading::Done;
                            None
                        }
                        Reading::Length(remaining) => Some(Err(format!(
                            "the upstream closed the connection {remaining} bytes short of the response's Content-Length"
                        )
                        .into())),
                        _ => Some(Err(
                            "the upstream closed the connection in the middle of a chunked response body".into(),
                        )),
                    });
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(Box::new(error)))),
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done | Reading::Switched)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(remaining) => SizeHint::with_exact(remaining),
            Reading::Done | Reading::Switched => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: the bytes the upstream sent past
/// the response head come first, then the socket.
pub struct Upgraded {
    io: UpstreamStream,
    pending: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use http::header::HeaderValue;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    use super::*;

    /// A connection to an upstream played by `script` on a blocking socket in a thread.
    async fn upstream(
        script: impl FnOnce(std::net::TcpStream) + Send + 'static,
    ) -> (Conn, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            script(socket);
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        (Conn::new(UpstreamStream::Plain(tcp)), thread)
    }

    /// Reads one request head from a blocking socket, byte by byte, and returns it.
    pub(in crate::upstream) fn read_head(socket: &mut std::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(socket.read(&mut byte).unwrap(), 1, "request head cut short");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// An upstream script: reads one request head and sends `answer`.
    fn answering(
        answer: impl AsRef<[u8]> + Send + 'static,
    ) -> impl FnOnce(std::net::TcpStream) + Send + 'static {
        move |mut socket| {
            read_head(&mut socket);
            socket.write_all(answer.as_ref()).unwrap();
        }
    }

    /// Writes `bytes` a few at a time, so every parser state meets a boundary.
    fn dribble(socket: &mut std::net::TcpStream, bytes: &[u8], step: usize) {
        for piece in bytes.chunks(step) {
            socket.write_all(piece).unwrap();
            socket.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    async fn send(
        conn: Conn,
        method: Method,
        body: UpstreamBody,
    ) -> Result<http::Response<ResponseBody>, Failure> {
        let (parts, body) = http::Request::builder()
            .method(method.clone())
            .uri("/items?id=7")
            .header("host", "upstream.test")
            .body(body)
            .unwrap()
            .into_parts();
        let authority: Authority = "upstream.test".parse().unwrap();
        conn.exchange(false, &parts, &Added::NONE, &authority, body)
            .await
    }

    /// The body's bytes and trailers, or the error that ended it.
    async fn read_body(body: &mut ResponseBody) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            match frame?.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers))
    }

    fn failure(result: Result<http::Response<ResponseBody>, Failure>) -> String {
        match result {
            Ok(response) => panic!("expected a failure, got {}", response.status()),
            Err(failure) => failure.into_error().to_string(),
        }
    }

    fn sized(bytes: &'static [u8]) -> UpstreamBody {
        http_body_util::Full::new(Bytes::from_static(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body of unknown length: `count` pieces of `piece`, one per poll.
    fn streamed(piece: &'static [u8], count: usize) -> UpstreamBody {
        let frames = futures_util::stream::iter(
            (0..count).map(move |_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(piece)))),
        );
        http_body_util::StreamBody::new(frames).boxed()
    }

    #[tokio::test]
    async fn a_chunked_response_split_at_every_byte_decodes_with_its_trailers() {
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
            dribble(
                &mut socket,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;name=value\r\nhello\r\n7 \r\n, world\r\n0\r\nchecksum: abc\r\n\r\n",
                1,
            );
        })
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        let (data, trailers) = read_body(response.body_mut()).await.unwrap();
        assert_eq!(data, b"hello, world");
        assert_eq!(trailers.unwrap()["checksum"], "abc");
        assert!(
            response.body().reusable(),
            "a clean end keeps the connection"
        );
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_the_connection_is_not_reused() {
        let (conn, upstream) = upstream(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")).await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        assert!(response.body().size_hint().exact().is_none());
        let (data, _) = read_body(response.body_mut()).await.unwrap();
        assert_eq!(data, b"until the end");
        assert!(!response.body().reusable());
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_their_headers_say() {
        for (method, status_line) in [
            (Method::HEAD, "200 OK"),
            (Method::GET, "204 No Content"),
            (Method::GET, "304 Not Modified"),
        ] {
            let head = format!("HTTP/1.1 {status_line}\r\nContent-Length: 1000\r\n\r\n");
            let (conn, upstream) = upstream(answering(head)).await;
            let response = send(conn, method.clone(), crate::error::empty())
                .await
                .unwrap();
            assert!(response.body().is_end_stream(), "{method} {status_line}");
            assert!(response.body().reusable(), "{method} {status_line}");
            upstream.join().unwrap();
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (conn, upstream) = upstream(answering(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                      HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.headers().get("link").is_none());
        assert_eq!(read_body(response.body_mut()).await.unwrap().0, b"ok");
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn fields_that_describe_the_connection_are_not_in_the_response() {
        let (conn, upstream) = upstream(answering(
            b"HTTP/1.1 200 OK\r\nServer: origin\r\nConnection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\nX-Hop: 1\r\nUpgrade: h2c\r\nTrailer: x-sum\r\n\
              Proxy-Authenticate: Basic\r\nx-hop-not: kept\r\nContent-Length: 2\r\n\r\nok",
        ))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        let mut names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "server", "x-hop-not"]);
        assert_eq!(read_body(response.body_mut()).await.unwrap().0, b"ok");
        assert!(
            response.body().reusable(),
            "keep-alive was read before it was left out"
        );
        upstream.join().unwrap();
    }

    #[test]
    fn framing_fields_read_off_the_raw_head_as_the_map_would_say_them() {
        let framing = |head: &str| {
            let mut buf = BytesMut::from(head);
            parse_head(&mut buf, false).unwrap().unwrap().framing
        };
        let f = framing("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 7, 7\r\n\r\n");
        assert!(f.close && !f.keep_alive && !f.transfer_encoding);
        assert_eq!(f.content_length, Ok(Some(7)));
        let f = framing(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: , chunked \r\n\r\n",
        );
        assert!(f.transfer_encoding && f.final_coding_chunked && !f.has_content_length);
        let f = framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(f.transfer_encoding && !f.final_coding_chunked);
        let f = framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert!(f.content_length.unwrap_err().contains("conflicting"));
        let f =
            framing("HTTP/1.0 200 OK\r\nConnection: x-a, Keep-Alive\r\nContent-Length: +1\r\n\r\n");
        assert!(f.keep_alive && f.lists_other_fields);
        assert!(
            f.content_length
                .unwrap_err()
                .contains("invalid Content-Length \"+1\"")
        );
    }

    #[tokio::test]
    async fn transfer_encoding_overrides_content_length_and_retires_the_connection() {
        let (conn, upstream) = upstream(answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
                      2\r\nok\r\n0\r\n\r\n",
        ))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        assert!(response.headers().get("content-length").is_none());
        assert_eq!(read_body(response.body_mut()).await.unwrap().0, b"ok");
        assert!(
            !response.body().reusable(),
            "a response with both is suspect"
        );
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn malformed_responses_are_refused_with_what_was_wrong() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length \"-1\"",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response head"),
            (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed response head"),
        ];
        for (answer, expected) in cases {
            let (conn, upstream) = upstream(answering(answer)).await;
            let error = failure(send(conn, Method::GET, crate::error::empty()).await);
            assert!(error.contains(expected), "{error} (expected {expected})");
            upstream.join().unwrap();
        }
    }

    #[tokio::test]
    async fn a_response_head_over_the_limit_is_refused() {
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n");
            let field = format!("x-filler: {}\r\n", "a".repeat(1000));
            for _ in 0..80 {
                if socket.write_all(field.as_bytes()).is_err() {
                    break;
                }
            }
        })
        .await;
        let error = failure(send(conn, Method::GET, crate::error::empty()).await);
        assert!(error.contains("larger than 64 KiB"), "{error}");
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_naming_the_missing_bytes() {
        let (conn, upstream) = upstream(answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        let error = read_body(response.body_mut())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("7 bytes short"), "{error}");
        assert!(!response.body().reusable());
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_without_a_byte_of_response_is_told_apart() {
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
        })
        .await;
        match send(conn, Method::GET, crate::error::empty()).await {
            Err(Failure::NoResponse(error)) => {
                assert!(error.to_string().contains("without responding"), "{error}")
            }
            Err(other) => panic!("not a NoResponse: {}", other.into_error()),
            Ok(response) => panic!("got {}", response.status()),
        }
        upstream.join().unwrap();
    }

    #[test]
    fn the_added_fields_follow_the_requests_own_and_a_host_among_them_is_the_only_one() {
        let authority: Authority = "10.0.0.9:8080".parse().unwrap();
        let encode = |request: http::Request<UpstreamBody>, added: &Added<'_>| {
            let (parts, body) = request.into_parts();
            let mut out = Vec::new();
            encode_request(&parts, added, &body, &authority, &mut out);
            String::from_utf8(out).unwrap()
        };
        let request = || {
            http::Request::get("/a?b=1")
                .header("accept", "*/*")
                .body(crate::error::empty())
                .unwrap()
        };
        // Nothing added and no Host: the endpoint's authority is the Host.
        assert_eq!(
            encode(request(), &Added::NONE),
            "GET /a?b=1 HTTP/1.1\r\nhost: 10.0.0.9:8080\r\naccept: */*\r\n\r\n"
        );
        let mut headers = http::HeaderMap::new();
        let mut added = crate::headers::forwarding(
            &mut headers,
            "192.0.2.1".parse().unwrap(),
            false,
            Some(&HeaderValue::from_static("shop.test")),
            &HeaderValue::from_static("id-1"),
        );
        added.set_host(&mut headers, HeaderValue::from_static("shop.test"));
        assert_eq!(
            encode(request(), &added),
            "GET /a?b=1 HTTP/1.1\r\naccept: */*\r\nhost: shop.test\r\n\
             x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.test\r\nx-request-id: id-1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn request_bodies_go_out_sized_or_chunked() {
        let (conn, peer) = upstream(|mut socket| {
            let head = read_head(&mut socket).to_ascii_lowercase();
            assert!(head.starts_with("post /items?id=7 http/1.1\r\n"), "{head}");
            assert!(head.contains("\r\ncontent-length: 5\r\n"), "{head}");
            let mut body = [0u8; 5];
            socket.read_exact(&mut body).unwrap();
            assert_eq!(&body, b"hello");
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
        })
        .await;
        let response = send(conn, Method::POST, sized(b"hello")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        peer.join().unwrap();

        let (conn, peer) = upstream(|mut socket| {
            let head = read_head(&mut socket).to_ascii_lowercase();
            assert!(
                head.contains("\r\ntransfer-encoding: chunked\r\n"),
                "{head}"
            );
            assert!(!head.contains("content-length"), "{head}");
            let expected = b"3\r\nabc\r\n3\r\nabc\r\n3\r\nabc\r\n0\r\n\r\n";
            let mut body = vec![0u8; expected.len()];
            socket.read_exact(&mut body).unwrap();
            assert_eq!(body, expected);
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
        })
        .await;
        let response = send(conn, Method::POST, streamed(b"abc", 3)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.body().reusable());
        peer.join().unwrap();
    }

    #[tokio::test]
    async fn an_upstream_that_answers_before_the_body_is_done_is_heard() {
        // 64 MiB of request body the upstream never reads: without watching for its answer,
        // the sender would block on a full socket forever.
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
            socket
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
        })
        .await;
        let piece: &'static [u8] = Box::leak(vec![b'x'; 64 * 1024].into_boxed_slice());
        let mut response = send(conn, Method::POST, streamed(piece, 1024))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(read_body(response.body_mut()).await.unwrap().0, b"too big!");
        assert!(
            !response.body().reusable(),
            "a request cut short leaves the connection unusable"
        );
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn an_upstream_that_answers_while_it_reads_gets_the_rest_of_the_body() {
        // An echo: the upstream sends its head at once, then returns each piece of the
        // request body as it reads it. The client's body is not done when the head comes.
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            for _ in 0..3 {
                let mut chunk = [0u8; 8]; // "5\r\nhello\r\n" less one: read the frame exactly
                socket.read_exact(&mut chunk[..3]).unwrap();
                assert_eq!(&chunk[..3], b"5\r\n");
                let mut data = [0u8; 7];
                socket.read_exact(&mut data).unwrap();
                assert_eq!(&data, b"hello\r\n");
                socket.write_all(b"5\r\nhello\r\n").unwrap();
            }
            let mut end = [0u8; 5];
            socket.read_exact(&mut end).unwrap();
            assert_eq!(&end, b"0\r\n\r\n");
            socket.write_all(b"0\r\n\r\n").unwrap();
        })
        .await;
        let (pieces, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let piece = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(piece)), rx))
        });
        let body = http_body_util::StreamBody::new(frames).boxed();
        // Nothing of the body is given before the head is back: the exchange must hand over
        // the response while the request is still going out.
        let mut response = send(conn, Method::POST, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let client = async move {
            for _ in 0..3 {
                pieces.send(Bytes::from_static(b"hello")).await.unwrap();
            }
        };
        let ((), read) = tokio::join!(client, read_body(response.body_mut()));
        assert_eq!(read.unwrap().0, b"hellohellohello");
        assert!(response.body().reusable(), "both directions ended cleanly");
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn a_body_that_ends_in_trailers_frees_its_connection_without_another_poll() {
        let (conn, upstream) = upstream(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n"))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        let body = response.body_mut();
        loop {
            let frame = std::future::poll_fn(|cx| body.poll_frame(cx))
                .await
                .unwrap()
                .unwrap();
            if frame.is_trailers() {
                break; // hyper's server stops polling here
            }
        }
        assert!(body.reusable());
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn a_switch_nobody_asked_for_and_endless_interim_responses_are_refused() {
        let (conn, peer) = upstream(answering(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n",
        ))
        .await;
        let error = failure(send(conn, Method::GET, crate::error::empty()).await);
        assert!(error.contains("did not ask"), "{error}");
        peer.join().unwrap();

        let (conn, peer) = upstream(|mut socket| {
            read_head(&mut socket);
            for _ in 0..40 {
                if socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    break;
                }
            }
        })
        .await;
        let error = failure(send(conn, Method::GET, crate::error::empty()).await);
        assert!(error.contains("interim responses"), "{error}");
        peer.join().unwrap();
    }

    #[tokio::test]
    async fn after_a_protocol_switch_the_bytes_past_the_head_come_first() {
        let (conn, upstream) = upstream(|mut socket| {
            read_head(&mut socket);
            socket
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly")
                .unwrap();
            let mut buf = [0u8; 4];
            socket.read_exact(&mut buf).unwrap();
            socket.write_all(&buf).unwrap();
        })
        .await;
        let (parts, body) = http::Request::get("/chat")
            .header("host", "upstream.test")
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(crate::error::empty())
            .unwrap()
            .into_parts();
        let authority: Authority = "upstream.test".parse().unwrap();
        let response = conn
            .exchange(false, &parts, &Added::NONE, &authority, body)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The tunnel's fields stay on a 101 (the proxy sends them on to the client).
        assert_eq!(response.headers()["upgrade"], "echo");
        assert_eq!(response.headers()["connection"], "upgrade");
        let mut upgraded = response.into_body().into_upgraded().unwrap();
        let mut early = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut upgraded, &mut early)
            .await
            .unwrap();
        assert_eq!(&early, b"early");
        upgraded.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut upgraded, &mut echo)
            .await
            .unwrap();
        assert_eq!(&echo, b"ping");
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn bytes_past_the_response_retire_the_connection() {
        let (conn, upstream) = upstream(answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        ))
        .await;
        let mut response = send(conn, Method::GET, crate::error::empty())
            .await
            .unwrap();
        assert_eq!(read_body(response.body_mut()).await.unwrap().0, b"ok");
        assert!(!response.body().reusable());
        upstream.join().unwrap();
    }

    #[tokio::test]
    async fn http_1_0_and_connection_close_say_whether_the_connection_stays() {
        for (answer, reusable) in [
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            // RFC 9112 6.1: chunked framing in an HTTP/1.0 response is not trusted.
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                false,
            ),
        ] {
            let (conn, upstream) = upstream(answering(answer)).await;
            let mut response = send(conn, Method::GET, crate::error::empty())
                .await
                .unwrap();
            read_body(response.body_mut()).await.unwrap();
            assert_eq!(response.body().reusable(), reusable, "{answer}");
            upstream.join().unwrap();
        }
    }

    /// Encodes `chunks` as a chunked body with an extension and a trailer.
    fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:X};x=y\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_the_same_however_they_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            step in 1usize..64,
        ) {
            let wire = chunked(&chunks);
            let mut state = Chunk::Size;
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            let mut ended = false;
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(decoded) = decode_chunked(&mut state, &mut buf).unwrap() {
                    match decoded {
                        Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                        Decoded::Trailers(trailers) => prop_assert_eq!(&trailers["x-sum"], "1"),
                        Decoded::End => { ended = true; break; }
                    }
                }
            }
            prop_assert!(ended);
            prop_assert!(buf.is_empty());
            prop_assert_eq!(data, chunks.concat());
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(decoded)) = decode_chunked(&mut state, &mut buf) {
                if matches!(decoded, Decoded::End) {
                    break;
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_head(&mut buf, false);
        }

        #[test]
        fn response_heads_with_arbitrary_fields_parse_or_are_refused(
            status in 0u16..1000,
            fields in proptest::collection::vec(("[!-~]{0,12}", "[ -~]{0,20}"), 0..20),
        ) {
            let mut head = format!("HTTP/1.1 {status:03} Reason\r\n");
            for (name, value) in &fields {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\nbody");
            let mut buf = BytesMut::from(head.as_bytes());
            let mut raw_buf = buf.clone();
            if let Ok(Some(parsed)) = parse_head(&mut buf, false) {
                prop_assert_eq!(parsed.status.as_u16(), status);
                prop_assert_eq!(&buf[..], b"body");
                // Left raw, the same fields in the same order, as the map would hold them.
                let Some(Head { fields: Fields::Raw(raw), .. }) =
                    parse_head(&mut raw_buf, true).unwrap()
                else {
                    return Ok(());
                };
                let Fields::Map(map) = parsed.fields else { unreachable!() };
                let from_map: Vec<(String, Vec<u8>)> = map
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                let mut from_raw: Vec<(String, Vec<u8>)> = raw
                    .iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
                    .collect();
                // A map groups a name's values together; compare as multisets per name.
                let mut sorted_map = from_map.clone();
                sorted_map.sort();
                from_raw.sort();
                prop_assert_eq!(sorted_map, from_raw);
            }
        }
    }
}
