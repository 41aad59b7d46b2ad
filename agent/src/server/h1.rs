//! The agent's own HTTP/1.1 server, for the request nearly all traffic is: HTTP/1.1, an
//! origin-form target, no body or a small one (up to 16 KiB, by `Content-Length`), no upgrade.
//!
//! Such a request is parsed straight into the `Request` the proxy reads (its header values
//! slices of the read buffer, not copies; a small body read whole with its head, as nginx
//! buffers request bodies), and the response head and a body that is ready go out in one
//! write. The first request that is anything else (a larger or chunked body, `Expect`, an
//! upgrade, HTTP/1.0, an absolute or `*` target, `CONNECT`, a malformed or oversized head, the
//! HTTP/2 preface) hands the connection, with every byte read and not yet answered, to hyper,
//! which serves it from then on: hyper answers 400 and 431, streams request bodies, runs
//! upgrades and HTTP/2. Nothing is consumed before a request is known to be ours, so the
//! handover is exact.
//!
//! What the connection keeps from hyper's behaviour: the header-read timeout runs from the
//! moment the server waits for a head (an idle keep-alive connection included) to the head's
//! end (here: to the end of a small body read with it); a client that closes while its request is in flight cancels it (the upstream exchange
//! is dropped); pipelined requests are answered in order; `Connection: close` closes after the
//! response; a drain lets the request in flight finish and closes idle connections at once.
//! Responses: `Content-Length` when the body's size is known, chunked (with trailers) when not,
//! no body for HEAD, 1xx, 204 and 304; a `Date` when the response has none.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::ServerSettings;
use crate::ResponseBody;
use crate::headers::field_items;
use crate::inbound::Inbound;
use crate::wire::{
    BodyWriter, Framing, MAX_HEADERS, Message, RawFields, Spans, content_length, push_field,
    push_length,
};

/// The most fields a request head may have here (hyper's limit, so a head with more gets the
/// same 431 from hyper either way).
const MAX_REQUEST_FIELDS: usize = 100;
const _: () = assert!(MAX_REQUEST_FIELDS <= MAX_HEADERS);

/// A write buffer larger than this is not kept for the next response.
const WRITE_KEEP: usize = 64 * 1024;
/// Room a read asks for: a request head in one read.
const READ_SIZE: usize = 8 * 1024;
/// Room a request's header map keeps for fields added on the way (a policy's claim or
/// consumer headers, a route's header edits): inserting into a map sized exactly to the
/// client's fields grows and rehashes it (~0.8 k instructions).
const REQUEST_FIELDS_SPARE: usize = 4;
/// Request bodies up to this size are read whole with their head; a larger one makes the
/// request hyper's, which streams it.
const BUFFERED_BODY_LIMIT: u64 = 16 * 1024;

/// How serving a connection ended.
pub(super) enum Ended<S> {
    /// The connection is done (closed by either side, timed out, drained or failed).
    Closed,
    /// A request this server leaves to hyper arrived: the connection, with the bytes read and
    /// not answered in front.
    HandOff(Rewound<S>),
}

/// Serves requests on `io` until the connection ends or a request is not ours. `service`
/// answers each request; `drain` says when to stop taking new ones.
pub(super) async fn serve<S, F, Fut>(
    io: S,
    settings: ServerSettings,
    drain: &CancellationToken,
    mut service: F,
) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<Inbound>) -> Fut,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    let mut conn = Conn {
        io,
        read: BytesMut::with_capacity(READ_SIZE),
        write: Vec::new(),
        timer: None,
    };
    let mut draining = pin!(drain.cancelled());
    loop {
        let (request, close) = match conn.next_head(&settings, draining.as_mut()).await {
            Next::Request { request, close } => (request, close),
            Next::Closed => return Ended::Closed,
            Next::NotOurs => {
                return Ended::HandOff(Rewound {
                    prefix: conn.read.freeze(),
                    io: conn.io,
                });
            }
        };
        let head_only = request.method() == Method::HEAD;
        let response = {
            let mut answer = pin!(service(request));
            loop {
                // The client is read while its request is in flight: its close cancels the
                // request, and a pipelined request waits in the buffer.
                tokio::select! {
                    biased;
                    answered = &mut answer => match answered {
                        Ok(response) => break response,
                        Err(never) => match never {},
                    },
                    read = conn.io.read_buf(&mut conn.read), if conn.read.len() < settings.max_header_bytes => {
                        if matches!(read, Ok(0) | Err(_)) {
                            tracing::debug!("the client closed its connection with a request in flight; the request is cancelled");
                            return Ended::Closed;
                        }
                    }
                }
            }
        };
        let keep_alive = !close && !drain.is_cancelled();
        match conn.respond(head_only, response, keep_alive).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.io.shutdown().await;
                return Ended::Closed;
            }
            Err(error) => {
                tracing::debug!("response not sent whole, closing the connection: {error}");
                return Ended::Closed;
            }
        }
    }
}

/// A connection between requests: the socket, bytes read and not consumed, the write buffer
/// kept from one response to the next, and the header-read timer.
struct Conn<S> {
    io: S,
    read: BytesMut,
    write: Vec<u8>,
    /// Set once and then only moved when it fires: it may still carry an earlier head's
    /// deadline, which is then checked against the real one (one timer operation per timeout
    /// period, not per request).
    timer: Option<Pin<Box<Sleep>>>,
}

// The request is most of it, and moves once into the service; a box would be an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request {
        request: Request<Inbound>,
        /// The client asked to close after this request.
        close: bool,
    },
    Closed,
    NotOurs,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads until the buffer starts with a complete request head, or the connection ends.
    async fn next_head(
        &mut self,
        settings: &ServerSettings,
        mut draining: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Next {
        let mut deadline = None;
        // After a first parse found the head incomplete, it is parsed again only once the new
        // bytes hold the blank line that ends a head (or the body it waits for is all here, or
        // the head outgrew the limit): a head dribbled a byte at a time is scanned once, not
        // re-parsed from its start at every read.
        let mut parsed_up_to = 0;
        let mut body_end = 0;
        loop {
            let worth_parsing = parsed_up_to == 0
                || if body_end > 0 {
                    self.read.len() >= body_end
                } else {
                    self.read.len() > settings.max_header_bytes
                        || ends_a_head(&self.read, parsed_up_to)
                };
            if !self.read.is_empty() && worth_parsing {
                match parse_request(&mut self.read, settings.max_header_bytes) {
                    Parsed::Complete { request, close } => return Next::Request { request, close },
                    Parsed::Partial { needed } => {
                        parsed_up_to = self.read.len();
                        body_end = needed;
                    }
                    Parsed::NotOurs => return Next::NotOurs,
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if self.read.capacity() - self.read.len() < READ_SIZE / 8 {
                // Reclaims the buffer in place once the last request's slices are gone.
                self.read.reserve(READ_SIZE);
            }
            tokio::select! {
                biased;
                // Between requests a drain closes the connection at once.
                () = draining.as_mut(), if self.read.is_empty() => return Next::Closed,
                read = self.io.read_buf(&mut self.read) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        return Next::Closed;
                    }
                }
                () = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        tracing::debug!(
                            "no complete request head within the header timeout ({:?}); closing the connection",
                            settings.header_timeout
                        );
                        return Next::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Writes `response`; says whether the connection may carry another request.
    async fn respond(
        &mut self,
        head_only: bool,
        response: Response<ResponseBody>,
        keep_alive: bool,
    ) -> Result<bool, crate::BoxError> {
        let (parts, body) = response.into_parts();
        let mut out = std::mem::take(&mut self.write);
        out.clear();
        let (framing, keep_alive) = encode_response(&parts, head_only, &body, keep_alive, &mut out);
        let mut writer = BodyWriter::new(body, framing, out, Message::Response);
        let sent = poll_fn(|cx| writer.poll_send(&mut self.io, cx)).await;
        self.write = writer.into_buffer();
        if self.write.capacity() > WRITE_KEEP {
            // One large body frame does not pin its size for the connection's life.
            self.write = Vec::new();
        }
        match sent {
            Ok(()) => Ok(keep_alive),
            Err(crate::wire::SendError::Body(error)) => Err(error),
            Err(crate::wire::SendError::Write(error)) => Err(Box::new(error)),
        }
    }
}

// The request is most of it, and moves once into the service; a box would be an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Complete {
        request: Request<Inbound>,
        close: bool,
    },
    /// More bytes are needed: `needed` is the length the buffer must reach when the head is
    /// complete and its body is not, 0 while the head itself is incomplete.
    Partial {
        needed: usize,
    },
    NotOurs,
}

/// Whether `buf` from `from` on (with the three bytes before it) holds an empty line: the end
/// of a head (`\n\r\n` or a bare `\n\n`).
fn ends_a_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..].iter().enumerate().any(|(i, &b)| {
        b == b'\n' && matches!(&buf[start + i + 1..], [b'\n', ..] | [b'\r', b'\n', ..])
    })
}

/// Takes a complete request head off the front of `buf` if it is one this server serves;
/// leaves `buf` as it was otherwise.
fn parse_request(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_REQUEST_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        // Field offsets are kept in 16 bits (`Spans`): a larger head is hyper's whatever the
        // configured limit.
        Ok(httparse::Status::Complete(len)) if len <= max_head.min(usize::from(u16::MAX)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => {
            return Parsed::Partial { needed: 0 };
        }
        // Malformed, too many fields, too large: hyper answers those (400, 431).
        _ => return Parsed::NotOurs,
    };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::NotOurs;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::NotOurs;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::NotOurs;
    }
    let mut close = false;
    let mut body_len: Option<u64> = None;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
        match name.len() {
            14 if is("content-length") => match (body_len, content_length(None, field.value)) {
                (None, Ok(length)) => body_len = length,
                // Malformed, conflicting or repeated: hyper judges it.
                _ => return Parsed::NotOurs,
            },
            17 if is("transfer-encoding") => return Parsed::NotOurs,
            6 if is("expect") => return Parsed::NotOurs,
            7 if is("upgrade") => return Parsed::NotOurs,
            10 if is("connection") => {
                for item in field_items(field.value) {
                    if item.eq_ignore_ascii_case("upgrade") {
                        return Parsed::NotOurs;
                    }
                    close |= item.eq_ignore_ascii_case("close");
                }
            }
            _ => {}
        }
    }
    let body_len = match body_len.unwrap_or(0) {
        // Too large to buffer: hyper streams it.
        length if length > BUFFERED_BODY_LIMIT => return Parsed::NotOurs,
        length => length as usize,
    };
    if buf.len() < len + body_len {
        // The body is still arriving.
        return Parsed::Partial {
            needed: len + body_len,
        };
    }
    let spans = Spans::of(buf, parsed.headers.iter());
    let target_start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target_start..target_start + path.len();
    let block = buf.split_to(len).freeze();
    let (Ok(headers), Ok(uri)) = (
        spans.header_map(&block, REQUEST_FIELDS_SPARE),
        Uri::from_maybe_shared(block.slice(target)),
    ) else {
        // Put back for hyper to answer: nothing is consumed from a request that is not ours.
        let mut restored = BytesMut::with_capacity(block.len() + buf.len());
        restored.extend_from_slice(&block);
        restored.extend_from_slice(buf);
        *buf = restored;
        return Parsed::NotOurs;
    };
    let body = match body_len {
        0 => Inbound::Empty,
        n => Inbound::buffered(buf.split_to(n).freeze()),
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Complete { request, close }
}

/// Writes the status line and header fields of a response to an HTTP/1.1 request into `out`,
/// with the framing fields this server decides. Returns how the body goes out and whether the
/// connection stays open after it.
fn encode_response(
    parts: &http::response::Parts,
    head_only: bool,
    body: &ResponseBody,
    mut keep_alive: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // RFC 9110 8.6: no Content-Length in a 1xx or 204.
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    let bodiless = head_only || no_length || status == StatusCode::NOT_MODIFIED;
    let mut fields = Fields::default();
    for (name, value) in &parts.headers {
        fields.write(
            name.as_str().as_bytes(),
            value.as_bytes(),
            &mut keep_alive,
            out,
        );
    }
    if let Some(raw) = parts.extensions.get::<RawFields>() {
        for (name, value) in raw.iter() {
            // The proxy's own fields replace the upstream's of the same name.
            if !replaced(&parts.headers, name) {
                fields.write(name, value, &mut keep_alive, out);
            }
        }
    }
    let Fields { length, has_date } = fields;
    // Conflicting or malformed lengths are dropped for the body's own.
    let declared = length.ok().flatten().filter(|_| !no_length);
    let framing = if bodiless {
        // A HEAD or 304 may say the length the full response would have.
        if let Some(length) = declared {
            push_length(out, length);
        }
        Framing::None
    } else if let Some(length) = declared.or_else(|| body.size_hint().exact()) {
        push_length(out, length);
        Framing::Length(length)
    } else {
        push_field(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !keep_alive {
        push_field(out, b"connection", b"close");
    }
    if !has_date {
        push_date(out);
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// What writing a response's fields found out on the way.
struct Fields {
    /// The `Content-Length` the fields gave, if any, or why it cannot be used.
    length: Result<Option<u64>, String>,
    has_date: bool,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            length: Ok(None),
            has_date: false,
        }
    }
}

impl Fields {
    /// Writes one field, except the framing fields this server decides itself.
    fn write(&mut self, name: &[u8], value: &[u8], keep_alive: &mut bool, out: &mut Vec<u8>) {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
        match name.len() {
            14 if is("content-length") => {
                if let Ok(known) = self.length {
                    self.length = content_length(known, value);
                }
            }
            10 if is("connection") => {
                *keep_alive &= !field_items(value).any(|t| t.eq_ignore_ascii_case("close"));
            }
            17 if is("transfer-encoding") => {}
            _ => {
                self.has_date |= name.len() == 4 && is("date");
                push_field(out, name, value);
            }
        }
    }
}

/// Whether `headers` has a field named `name` (any case).
fn replaced(headers: &HeaderMap, name: &[u8]) -> bool {
    if headers.is_empty() {
        return false;
    }
    if headers.keys_len() <= 4 {
        return headers
            .keys()
            .any(|key| key.as_str().as_bytes().eq_ignore_ascii_case(name));
    }
    HeaderName::from_bytes(name).is_ok_and(|name| headers.contains_key(name))
}

/// Appends a `Date` field: the current second's, formatted once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        push_field(out, b"date", text.as_bytes());
    });
}

/// A connection handed to another server: the bytes already read from it come first.
pub(super) struct Rewound<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    use super::*;

    fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse_request(&mut buf, 64 * 1024);
        (parsed, buf)
    }

    #[test]
    fn the_common_request_is_ours_and_everything_else_is_left_whole_for_hyper() {
        let (parsed, rest) =
            parse(b"GET /a?b=c HTTP/1.1\r\nHost: x.test\r\nContent-Length: 0\r\n\r\nGET /next");
        let Parsed::Complete { request, close } = parsed else {
            panic!("a plain GET is ours");
        };
        assert_eq!(request.uri(), "/a?b=c");
        assert_eq!(request.headers()["host"], "x.test");
        assert!(!close);
        assert_eq!(&rest[..], b"GET /next", "exactly the head is consumed");

        let (parsed, _) = parse(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(matches!(parsed, Parsed::Complete { close: true, .. }));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x").0,
            Parsed::Partial { needed: 0 }
        ));

        let (parsed, rest) = parse(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET");
        let Parsed::Complete { request, .. } = parsed else {
            panic!("a small body is read with its head");
        };
        let Inbound::Prefixed {
            prefix: Some(body),
            rest: None,
        } = request.into_body()
        else {
            panic!("the body is buffered");
        };
        assert_eq!(&body[..], b"hello");
        assert_eq!(&rest[..], b"GET");
        let partial = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
        let (parsed, rest) = parse(partial);
        assert!(
            matches!(parsed, Parsed::Partial { needed } if needed == partial.len() + 2),
            "the body is still arriving"
        );
        assert_eq!(&rest[..], partial);

        for not_ours in [
            &b"POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nhi",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x.test/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost x.test\r\n\r\n",
        ] {
            let (parsed, rest) = parse(not_ours);
            assert!(
                matches!(parsed, Parsed::NotOurs),
                "{:?} should go to hyper",
                String::from_utf8_lossy(not_ours)
            );
            assert_eq!(&rest[..], not_ours, "nothing consumed");
        }

        let mut oversized = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        oversized.extend(std::iter::repeat_n(b'a', 100));
        let mut buf = BytesMut::from(&oversized[..]);
        assert!(matches!(parse_request(&mut buf, 64), Parsed::NotOurs));
        assert_eq!(&buf[..], &oversized[..]);
    }

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        body: ResponseBody,
        head_only: bool,
    ) -> (String, Framing, bool) {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (parts, body) = response.into_parts();
        let mut out = Vec::new();
        let (framing, keep_alive) = encode_response(&parts, head_only, &body, true, &mut out);
        (String::from_utf8(out).unwrap(), framing, keep_alive)
    }

    fn sized(text: &'static str) -> ResponseBody {
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    fn streamed() -> ResponseBody {
        http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, crate::BoxError>(
            hyper::body::Frame::data(Bytes::from_static(b"x")),
        )]))
        .boxed()
    }

    #[test]
    fn only_new_bytes_are_searched_for_the_end_of_a_head() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let found = ends_a_head(head, split);
            assert!(
                found,
                "the end is found when the new bytes start at {split}"
            );
        }
        assert!(!ends_a_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        assert!(ends_a_head(b"GET / HTTP/1.0\n\n", 14));
        // The blank line lies before the new bytes (and their three-byte overlap): not looked at
        // again, the parse already saw it.
        assert!(!ends_a_head(b"a\n\nbbbbbbbb", 8));
    }

    #[test]
    fn responses_are_framed_by_their_length_or_chunked_and_bodiless_ones_have_none() {
        let (head, framing, keep_alive) = encode(200, &[("x-a", "1")], sized("hello"), false);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "));
        assert!(head.ends_with(" GMT\r\n\r\n"));
        assert_eq!((framing, keep_alive), (Framing::Length(5), true));

        let (head, framing, _) = encode(200, &[], streamed(), false);
        assert!(head.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(framing, Framing::Chunked);

        // A declared length wins over the body's size hint, and goes out once.
        let (head, framing, _) = encode(200, &[("content-length", "7")], streamed(), false);
        assert_eq!(head.matches("content-length").count(), 1);
        assert_eq!(framing, Framing::Length(7));

        // Conflicting lengths are dropped for the body's own.
        let (head, framing, _) = encode(
            200,
            &[("content-length", "3"), ("content-length", "4")],
            sized("hello"),
            false,
        );
        assert!(head.contains("content-length: 5\r\n"));
        assert_eq!(framing, Framing::Length(5));

        let (head, framing, _) = encode(200, &[("content-length", "42")], sized(""), true);
        assert!(
            head.contains("content-length: 42\r\n"),
            "HEAD keeps the length"
        );
        assert_eq!(framing, Framing::None);
        let (head, framing, _) = encode(304, &[("content-length", "42")], sized(""), false);
        assert!(head.contains("content-length: 42\r\n"));
        assert_eq!(framing, Framing::None);
        let (head, framing, _) = encode(
            204,
            &[("content-length", "0"), ("transfer-encoding", "chunked")],
            sized(""),
            false,
        );
        assert!(!head.contains("content-length") && !head.contains("transfer-encoding"));
        assert_eq!(framing, Framing::None);

        // A response may close the connection; its own Date stays the only one.
        let (head, _, keep_alive) = encode(
            503,
            &[
                ("connection", "close"),
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
            sized(""),
            false,
        );
        assert!(!keep_alive);
        assert!(head.contains("connection: close\r\n"));
        assert_eq!(head.matches("date:").count(), 1);
        let (head, _, _) = encode(599, &[], sized(""), false);
        assert!(head.starts_with("HTTP/1.1 599 \r\n"));
    }

    #[test]
    fn raw_upstream_fields_are_written_with_the_proxys_replacing_theirs() {
        let mut response = Response::new(sized("hello"));
        response
            .extensions_mut()
            .insert(crate::wire::tests::raw_fields(
                "Content-Type: text/plain\r\nContent-Length: 5\r\nX-Request-Id: upstream\r\n\
                 Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
            ));
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("ours"));
        let (parts, body) = response.into_parts();
        let mut out = Vec::new();
        let (framing, keep_alive) = encode_response(&parts, false, &body, true, &mut out);
        let head = String::from_utf8(out).unwrap();
        assert_eq!((framing, keep_alive), (Framing::Length(5), true));
        assert!(head.contains("x-request-id: ours\r\n"));
        assert!(
            !head.contains("upstream"),
            "the proxy's id replaces the upstream's: {head}"
        );
        assert!(head.contains("Content-Type: text/plain\r\n"));
        assert!(head.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"));
        assert_eq!(
            head.to_ascii_lowercase().matches("content-length").count(),
            1
        );
        assert_eq!(
            head.to_ascii_lowercase().matches("date:").count(),
            1,
            "the upstream's Date"
        );
        assert!(head.ends_with("\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_left_untouched_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = BytesMut::from(&bytes[..]);
            match parse_request(&mut buf, 256) {
                Parsed::Complete { .. } => prop_assert!(bytes.ends_with(&buf)),
                Parsed::Partial { .. } | Parsed::NotOurs => prop_assert_eq!(&buf[..], &bytes[..]),
            }
        }

        #[test]
        fn request_heads_with_arbitrary_fields_parse_or_go_to_hyper(
            target in "/[a-z0-9/?=&%.-]{0,40}",
            fields in proptest::collection::vec(("[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}", "[ -~\t]{0,40}"), 0..12),
        ) {
            let mut head = format!("GET {target} HTTP/1.1\r\n");
            for (name, value) in &fields {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let mut buf = BytesMut::from(head.as_bytes());
            match parse_request(&mut buf, 64 * 1024) {
                Parsed::Complete { request, .. } => {
                    prop_assert!(buf.is_empty());
                    prop_assert_eq!(request.uri().path_and_query().unwrap().as_str(), target.as_str());
                    prop_assert_eq!(request.headers().len(), fields.len());
                }
                Parsed::NotOurs => prop_assert_eq!(&buf[..], head.as_bytes()),
                Parsed::Partial { .. } => prop_assert!(false, "a complete head is never partial"),
            }
        }
    }
}
