//! HTTP/1.1 to an upstream on a connection the calling task owns: the request is written and
//! its answer read by the task that needs the answer, with no task of the connection's own.
//!
//! hyper's client connection runs in a task of its own: a request crossed to it through a
//! channel, and its answer and body came back through two more, so every upstream exchange
//! woke a second task and passed through three queues (BENCHMARKS.md, issue 22). Here a
//! connection belongs to one request at a time and goes back on its origin's stack
//! ([`super::pool`]) once the answer was read whole and the upstream allows reuse.
//!
//! What is read (RFC 9112): a status line and at most [`MAX_HEADERS`] headers (httparse, as
//! hyper reads them), interim 1xx answers skipped, and a body framed by section 6.3: none for
//! HEAD, 1xx, 204 and 304; chunked when `Transfer-Encoding` ends in `chunked`; else
//! `Content-Length` (values that disagree are refused); else everything until the upstream
//! closes. The body is read whole, up to the caller's limit.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The most headers an answer may have, as hyper's client reads them.
pub(super) const MAX_HEADERS: usize = 100;
/// The largest answer head read (hyper's default read buffer limit).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A read buffer that grew past this (a large head) is not kept for the next request.
const KEPT_BUFFER: usize = 64 * 1024;
/// Bodies up to this size are written in the same buffer as the head: one write.
const INLINE_BODY: usize = 16 * 1024;

/// One HTTP/1.1 connection and the buffers it reuses from request to request.
pub(super) struct Connection<Io> {
    io: Io,
    /// Bytes read and not consumed yet; empty between exchanges. An answer's head and body
    /// are split off it, not copied: its headers' values and its body share its memory.
    read: BytesMut,
    /// The request being written; its capacity is kept.
    write: Vec<u8>,
    /// Where the headers of the answer being parsed sit in `read` (name and value, each as
    /// offset and length); its capacity is kept.
    places: Vec<[usize; 4]>,
}

/// What one request sends.
pub(super) struct Request<'a> {
    pub(super) method: &'a Method,
    /// The path and query (origin form).
    pub(super) target: &'a str,
    /// `Host`, unless `headers` or `extra` set it.
    pub(super) host: Option<&'a HeaderValue>,
    pub(super) headers: &'a HeaderMap,
    /// This attempt's own headers (trace context, credentials), which replace any of the same
    /// name in `headers`.
    pub(super) extra: &'a HeaderMap,
    pub(super) body: &'a [u8],
}

/// An answer read whole.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Whether the connection may carry another request.
    pub(super) reusable: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Error {
    /// The connection failed or closed before the answer was whole. `received` says whether
    /// any byte of the answer had come (when none had, a request that cannot act twice may be
    /// sent again on a new connection).
    Io { error: io::Error, received: bool },
    /// The answer is not HTTP/1.1 this client reads.
    Invalid(String),
    /// The body is larger than the caller's limit (which it names).
    TooLarge(usize),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { error, .. } => write!(f, "{error}"),
            Error::Invalid(detail) => f.write_str(detail),
            Error::TooLarge(limit) => write!(f, "response body larger than {limit} bytes"),
        }
    }
}

/// How an answer's body ends.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl<Io: AsyncRead + AsyncWrite + Unpin> Connection<Io> {
    pub(super) fn new(io: Io) -> Connection<Io> {
        Connection {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            places: Vec::new(),
        }
    }

    /// Whether the connection is still open with nothing unread: the upstream may have closed
    /// it while it sat idle. Costs no system call when nothing came since the last read and
    /// that read drained the socket (tokio then clears the socket's readiness, and a poll
    /// without it answers `Pending` at once).
    pub(super) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        // Pending: nothing to read, not closed. Anything else (a close, an error, bytes no
        // request asked for) makes the connection unusable.
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Sends `request` and reads its answer, the body at most `max_body` bytes.
    pub(super) async fn exchange(
        &mut self,
        request: &Request<'_>,
        max_body: usize,
    ) -> Result<Answer, Error> {
        self.read.clear();
        self.send(request).await.map_err(|error| Error::Io {
            error,
            received: false,
        })?;
        let answer = self.receive(request.method, max_body).await;
        if self.read.capacity() > KEPT_BUFFER {
            self.read = BytesMut::with_capacity(READ_CHUNK);
        }
        answer
    }

    async fn send(&mut self, request: &Request<'_>) -> io::Result<()> {
        let out = &mut self.write;
        out.clear();
        out.extend_from_slice(request.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(request.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(host) = request.host
            && !request.headers.contains_key(HOST)
            && !request.extra.contains_key(HOST)
        {
            put_header(out, HOST.as_str(), host);
        }
        for (name, value) in request.headers {
            // The body is framed here; a name in `extra` is replaced by its value there.
            if name == CONTENT_LENGTH
                || name == TRANSFER_ENCODING
                || (!request.extra.is_empty() && request.extra.contains_key(name))
            {
                continue;
            }
            put_header(out, name.as_str(), value);
        }
        for (name, value) in request.extra {
            put_header(out, name.as_str(), value);
        }
        let body = request.body;
        if !body.is_empty() || matches!(*request.method, Method::POST | Method::PUT | Method::PATCH)
        {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if body.len() <= INLINE_BODY {
            out.extend_from_slice(body);
            self.io.write_all(out).await?;
        } else {
            self.io.write_all(out).await?;
            self.io.write_all(body).await?;
        }
        self.io.flush().await
    }

    async fn receive(&mut self, method: &Method, max_body: usize) -> Result<Answer, Error> {
        loop {
            let (status, headers, http10) = self.read_head().await?;
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Invalid("it switched protocols (101)".to_owned()));
                }
                // 100 Continue and other interim answers: the final one follows.
                continue;
            }
            let framing = framing(method, status, &headers)?;
            let mut reusable = keeps_alive(&headers, http10);
            let body = match framing {
                Framing::None => Bytes::new(),
                Framing::Length(length) => self.read_length(length, max_body).await?,
                Framing::Chunked => self.read_chunked(max_body).await?,
                Framing::UntilClose => {
                    reusable = false;
                    self.read_until_close(max_body).await?
                }
            };
            // Bytes no request asked for: the connection's state is unknown.
            if !self.read.is_empty() {
                reusable = false;
            }
            return Ok(Answer {
                status,
                headers,
                body,
                reusable,
            });
        }
    }

    /// Reads until an answer head is whole, and takes it off `read`: its status, headers, and
    /// whether it is HTTP/1.0.
    async fn read_head(&mut self) -> Result<(StatusCode, HeaderMap, bool), Error> {
        loop {
            if !self.read.is_empty()
                && let Some(head) = self.parse_head()?
            {
                return Ok(head);
            }
            if self.read.len() >= MAX_HEAD_BYTES {
                return Err(Error::Invalid(format!(
                    "its head is larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            let received = !self.read.is_empty();
            if self
                .fill()
                .await
                .map_err(|error| Error::Io { error, received })?
                == 0
            {
                return Err(Error::Io {
                    error: closed(),
                    received,
                });
            }
        }
    }

    /// The answer head at the start of `read`, taken off it, or `None` while it is partial.
    /// Header values are slices of the head's bytes, not copies.
    fn parse_head(&mut self) -> Result<Option<(StatusCode, HeaderMap, bool)>, Error> {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let consumed = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.read,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(consumed)) => consumed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid(format!("more than {MAX_HEADERS} headers")));
            }
            Err(error) => return Err(Error::Invalid(format!("its head: {error}"))),
        };
        let status = parsed
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| Error::Invalid("invalid status code".to_owned()))?;
        let http10 = parsed.version == Some(0);
        // Where each header's name and value sit in `read`: splitting the head off moves no
        // byte, so the same offsets find them in the head.
        let start = self.read.as_ptr() as usize;
        let at = |part: &[u8]| part.as_ptr() as usize - start;
        self.places.clear();
        self.places.extend(parsed.headers.iter().map(|header| {
            let (name, value) = (header.name.as_bytes(), header.value);
            [at(name), name.len(), at(value), value.len()]
        }));
        let head = self.read.split_to(consumed).freeze();
        let mut headers = HeaderMap::with_capacity(self.places.len());
        for &[name_at, name_len, value_at, value_len] in &self.places {
            let name = &head[name_at..name_at + name_len];
            let name = HeaderName::from_bytes(name).map_err(|_| invalid_header(name))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                .map_err(|_| invalid_header(name.as_str().as_bytes()))?;
            headers.append(name, value);
        }
        Ok(Some((status, headers, http10)))
    }

    /// Reads more into `read`; 0 when the upstream closed.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.read).await
    }

    /// Reads more of a body into `read`, or fails as the answer being cut short.
    async fn fill_body(&mut self) -> Result<(), Error> {
        match self.fill().await {
            Ok(0) => Err(Error::Io {
                error: closed(),
                received: true,
            }),
            Ok(_) => Ok(()),
            Err(error) => Err(Error::Io {
                error,
                received: true,
            }),
        }
    }

    async fn read_length(&mut self, length: u64, max_body: usize) -> Result<Bytes, Error> {
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= max_body)
            .ok_or(Error::TooLarge(max_body))?;
        // Whole already (the common case): split off, not copied.
        if self.read.len() >= length {
            return Ok(self.read.split_to(length).freeze());
        }
        let have = self.read.len();
        let mut body = Vec::with_capacity(length);
        body.extend_from_slice(&self.read);
        self.read.clear();
        body.resize(length, 0);
        self.io
            .read_exact(&mut body[have..])
            .await
            .map_err(|error| Error::Io {
                error,
                received: true,
            })?;
        Ok(Bytes::from(body))
    }

    async fn read_chunked(&mut self, max_body: usize) -> Result<Bytes, Error> {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            // The chunk's size line.
            let (size, line) = loop {
                match httparse::parse_chunk_size(&self.read[at..]) {
                    Ok(httparse::Status::Complete((line, size))) => break (size, line),
                    Ok(httparse::Status::Partial) => self.fill_body().await?,
                    Err(_) => return Err(Error::Invalid("an invalid chunk size".to_owned())),
                }
            };
            at += line;
            if size == 0 {
                break;
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|&size| body.len().saturating_add(size) <= max_body)
                .ok_or(Error::TooLarge(max_body))?;
            while self.read.len() < at + size + 2 {
                self.fill_body().await?;
            }
            body.extend_from_slice(&self.read[at..at + size]);
            if &self.read[at + size..at + size + 2] != b"\r\n" {
                return Err(Error::Invalid("a chunk not ended by CRLF".to_owned()));
            }
            at += size + 2;
            // Keep the buffer from holding the whole body too.
            self.read.advance(at);
            at = 0;
        }
        // Trailers, if any, up to the empty line that ends them; their values are not kept.
        loop {
            if let Some(end) = find_crlf(&self.read[at..]) {
                at += end + 2;
                if end == 0 {
                    break;
                }
                continue;
            }
            if self.read.len() - at > MAX_HEAD_BYTES {
                return Err(Error::Invalid("its trailers are too large".to_owned()));
            }
            self.fill_body().await?;
        }
        self.read.advance(at);
        Ok(Bytes::from(body))
    }

    async fn read_until_close(&mut self, max_body: usize) -> Result<Bytes, Error> {
        loop {
            if self.read.len() > max_body {
                return Err(Error::TooLarge(max_body));
            }
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    return Err(Error::Io {
                        error,
                        received: true,
                    });
                }
            }
        }
        Ok(std::mem::take(&mut self.read).freeze())
    }
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upstream closed the connection before the answer was complete",
    )
}

/// A header the client cannot hold, named (its value is not: it may be a credential).
fn invalid_header(name: &[u8]) -> Error {
    Error::Invalid(format!(
        "an invalid header {:?}",
        String::from_utf8_lossy(name)
    ))
}

/// How the body of an answer to `method` with `status` and `headers` ends.
fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, Error> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::None);
    }
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let parsed = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| Error::Invalid("an invalid content-length".to_owned()))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(Error::Invalid(
                    "content-length values that disagree".to_owned(),
                ));
            }
            length = Some(parsed);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Whether the upstream keeps the connection open after this answer.
fn keeps_alive(headers: &HeaderMap, http10: bool) -> bool {
    let has = |token: &[u8]| {
        headers.get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    if http10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A connection to an upstream that reads one request and answers with `answer`, written
    /// in pieces of `piece` bytes (to cross every read boundary); returns the request's bytes.
    async fn exchange_with(
        method: Method,
        body: &[u8],
        answer: &[u8],
        piece: usize,
        max_body: usize,
    ) -> (
        Result<Answer, Error>,
        Vec<u8>,
        Connection<DuplexStream>,
        DuplexStream,
    ) {
        let (client, mut upstream) = tokio::io::duplex(1 << 20);
        let answer = answer.to_vec();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = upstream.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            for part in answer.chunks(piece.max(1)) {
                upstream.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            (seen, upstream)
        });
        let mut connection = Connection::new(client);
        let headers = HeaderMap::new();
        let extra = HeaderMap::new();
        let host = HeaderValue::from_static("upstream.test");
        let request = Request {
            method: &method,
            target: "/v1/x?a=1",
            host: Some(&host),
            headers: &headers,
            extra: &extra,
            body,
        };
        let answer = connection.exchange(&request, max_body).await;
        let (seen, upstream) = server.await.unwrap();
        (answer, seen, connection, upstream)
    }

    #[tokio::test]
    async fn a_length_framed_answer_read_in_pieces_leaves_the_connection_reusable() {
        for piece in [1, 7, 4096] {
            let (answer, seen, mut connection, _upstream) = exchange_with(
                Method::GET,
                b"",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
                piece,
                1024,
            )
            .await;
            let answer = answer.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.body[..], b"hello");
            assert_eq!(answer.headers.get_all("x-a").iter().count(), 2);
            assert!(answer.reusable);
            assert!(connection.is_open(), "piece {piece}");
            assert_eq!(
                String::from_utf8(seen).unwrap(),
                "GET /v1/x?a=1 HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
            );
        }
    }

    #[tokio::test]
    async fn a_request_body_is_framed_by_its_length_and_headers_in_extra_replace() {
        let (client, mut upstream) = tokio::io::duplex(1 << 16);
        let mut connection = Connection::new(client);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer caller"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("host", HeaderValue::from_static("chosen.test"));
        let mut extra = HeaderMap::new();
        extra.insert("authorization", HeaderValue::from_static("Basic gateway"));
        let host = HeaderValue::from_static("upstream.test");
        let request = Request {
            method: &Method::POST,
            target: "/v1/x",
            host: Some(&host),
            headers: &headers,
            extra: &extra,
            body: b"a=1&b=2",
        };
        let server = tokio::spawn(async move {
            let mut seen = vec![0u8; 4096];
            let n = upstream.read(&mut seen).await.unwrap();
            seen.truncate(n);
            upstream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            (seen, upstream)
        });
        let answer = connection.exchange(&request, 10).await.unwrap();
        assert_eq!(answer.status, 204);
        assert!(answer.body.is_empty());
        let (seen, _upstream) = server.await.unwrap();
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            "POST /v1/x HTTP/1.1\r\nhost: chosen.test\r\nauthorization: Basic gateway\r\n\
             content-length: 7\r\n\r\na=1&b=2"
        );
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_with_extensions_and_trailers() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n";
        for piece in [1, 3, 4096] {
            let (answer, _, mut connection, _upstream) =
                exchange_with(Method::GET, b"", answer, piece, 1024).await;
            let answer = answer.unwrap();
            assert_eq!(&answer.body[..], b"hello world", "piece {piece}");
            assert!(answer.reusable);
            assert!(connection.is_open());
        }
    }

    /// A GET of `/` answered by an upstream that reads it, writes `answer` and closes.
    async fn answered_then_closed(answer: &[u8], max_body: usize) -> Result<Answer, Error> {
        let (client, mut upstream) = tokio::io::duplex(1 << 16);
        let answer = answer.to_vec();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = upstream.read(&mut buf).await.unwrap();
            upstream.write_all(&answer).await.unwrap();
        });
        let (headers, extra) = (HeaderMap::new(), HeaderMap::new());
        let request = Request {
            method: &Method::GET,
            target: "/",
            host: None,
            headers: &headers,
            extra: &extra,
            body: b"",
        };
        Connection::new(client).exchange(&request, max_body).await
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_naming_it() {
        let cases: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello world",
        ];
        for answer in cases {
            match answered_then_closed(answer, 10).await {
                Err(error @ Error::TooLarge(10)) => {
                    assert_eq!(error.to_string(), "response body larger than 10 bytes")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_close_delimited_bodies_read_to_the_end() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nthe end";
        let answer = answered_then_closed(answer, 100).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"the end");
        assert!(!answer.reusable);
    }

    #[tokio::test]
    async fn what_ends_reuse_and_what_is_refused() {
        let (answer, ..) = exchange_with(
            Method::GET,
            b"",
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
            4096,
            10,
        )
        .await;
        assert!(!answer.unwrap().reusable, "connection: close");
        let (answer, ..) = exchange_with(
            Method::GET,
            b"",
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            4096,
            10,
        )
        .await;
        assert!(answer.unwrap().reusable, "HTTP/1.0 with keep-alive");
        let (answer, ..) = exchange_with(
            Method::HEAD,
            b"",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
            4096,
            10,
        )
        .await;
        let answer = answer.unwrap();
        assert!(
            answer.body.is_empty() && answer.reusable,
            "HEAD has no body"
        );
        for (bad, expected) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nab"[..],
                "content-length values that disagree",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "an invalid content-length",
            ),
            (
                b"HTTP/1.1 101 Switching\r\n\r\n",
                "it switched protocols (101)",
            ),
            (b"SMTP ready\r\n\r\n", "its head: invalid HTTP version"),
        ] {
            match exchange_with(Method::GET, b"", bad, 4096, 10).await.0 {
                Err(Error::Invalid(detail)) => assert_eq!(detail, expected),
                other => panic!("{other:?}"),
            }
        }
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        match exchange_with(Method::GET, b"", many.as_bytes(), 4096, 10)
            .await
            .0
        {
            Err(Error::Invalid(detail)) => assert_eq!(detail, "more than 100 headers"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_close_is_told_apart_before_and_after_the_answer_began() {
        for (sent, received) in [(&b""[..], false), (b"HTTP/1.1 200 OK\r\ncont", true)] {
            match answered_then_closed(sent, 10).await {
                Err(Error::Io { received: r, .. }) => assert_eq!(r, received),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_open() {
        let (client, upstream) = tokio::io::duplex(1024);
        let mut connection = Connection::new(client);
        assert!(connection.is_open());
        drop(upstream);
        assert!(!connection.is_open());
    }
}
