//! Connections to upstream origins: per origin, a stack of idle HTTP/1.1 connections (the most
//! recently used first; [`super::h1`] speaks on them) or one shared HTTP/2 connection (hyper's),
//! and the bound on concurrent requests.
//!
//! hyper-util's pooled client did the same with more per request: a pool key built, cloned and
//! hashed under the pool's lock, a connect future raced against the checkout, and, for HTTP/1,
//! a task spawned on every request to return the connection once its body was read
//! (BENCHMARKS.md, issue 22). Here an origin is looked up once per call, an HTTP/1.1 connection
//! belongs to the request's task while it is used, and goes back on its stack once the answer
//! was read whole, with no task in between.
//!
//! What the pooled client did that callers can see is kept: `Host` set from the URL unless the
//! request sets it, HTTP/2 when TLS negotiates it by ALPN, idle connections kept at most
//! `upstream_max_idle` per origin and for at most [`IDLE_TIMEOUT`], and a request sent again on
//! a new connection when a reused one had closed under it: always when it was not sent (an
//! idle connection found closed is dropped unused), and when it was sent but no byte of an
//! answer came, only if sending it again cannot act twice ([`resendable`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tower_service::Service;

use super::h1;

type Body = Full<Bytes>;

/// What the connector hands over, as tokio reads and writes it.
type Stream = TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// How long an idle connection is kept for reuse.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Every origin's connections.
#[derive(Debug)]
pub(super) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    origins: RwLock<HashMap<String, Arc<Origin>, foldhash::fast::RandomState>>,
    max_idle: usize,
    max_connections: usize,
}

/// One origin (`scheme://host:port`): its request bound and its connections.
pub(super) struct Origin {
    /// Bounds concurrent requests to the origin.
    pub(super) slots: Semaphore,
    /// `Host` for its HTTP/1.1 requests, built once from the origin.
    host: Option<HeaderValue>,
    idle: Mutex<VecDeque<Idle>>,
    /// The HTTP/2 connection requests share, once one was negotiated.
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    max_idle: usize,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("host", &self.host)
            .field(
                "idle",
                &self.idle.lock().map(|idle| idle.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

struct Idle {
    connection: Box<h1::Connection<Stream>>,
    since: Instant,
}

/// A connection checked out for one request.
enum Conn {
    /// Boxed: it moves between the idle stack and the request, and its TLS state is large.
    Http1(Box<h1::Connection<Stream>>),
    Http2(http2::SendRequest<Body>),
}

/// One attempt's request, borrowed from the call that sends it.
pub(super) struct Outgoing<'a> {
    pub(super) method: &'a Method,
    /// Absolute, and a valid `http::Uri` (`encode` made it so).
    pub(super) url: &'a str,
    /// The path and query of `url`: the HTTP/1.1 request target.
    pub(super) target: &'a str,
    pub(super) headers: &'a HeaderMap,
    /// This attempt's own headers (trace context, credentials); they replace any of the same
    /// name in `headers`.
    pub(super) extra: &'a HeaderMap,
    pub(super) body: &'a Bytes,
}

/// An answer read whole.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// Why a request could not be sent or its answer read.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made (the connector's error).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/2 connection failed while the request was sent or its answer read.
    Http2(hyper::Error),
    /// The HTTP/1.1 exchange failed.
    Http1(h1::Error),
    /// The body is larger than the limit (which it names).
    TooLarge(usize),
}

impl Pool {
    pub(super) fn new(
        connector: HttpsConnector<HttpConnector>,
        max_idle: usize,
        max_connections: usize,
    ) -> Pool {
        Pool {
            connector,
            origins: RwLock::default(),
            max_idle,
            max_connections,
        }
    }

    /// The connections of `origin` (the key [`capgate_model::snapshot::origin_of`] makes).
    pub(super) fn origin(&self, origin: &str) -> Arc<Origin> {
        if let Some(found) = self.origins.read().expect("not poisoned").get(origin) {
            return found.clone();
        }
        let mut origins = self.origins.write().expect("not poisoned");
        origins
            .entry(origin.to_owned())
            .or_insert_with(|| {
                Arc::new(Origin {
                    slots: Semaphore::new(self.max_connections),
                    host: origin.parse().ok().as_ref().and_then(host_header),
                    idle: Mutex::new(VecDeque::new()),
                    shared: Mutex::new(None),
                    max_idle: self.max_idle,
                })
            })
            .clone()
    }

    /// Sends `request` to `origin` and reads its answer whole, the body at most `max_body`
    /// bytes: on an idle connection if there is one, and again on a new connection if that
    /// one failed before any of the answer came and sending again cannot act twice. An
    /// HTTP/1.1 connection goes back to the origin when the answer allows it.
    pub(super) async fn send(
        &self,
        origin: &Arc<Origin>,
        request: &Outgoing<'_>,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        loop {
            let (conn, reused) = match origin.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS, an HTTP/2 handshake) is the rare path, and its state
                // would otherwise sit in every request's future, copied each time it moves.
                None => (Box::pin(self.connect(origin, request.uri()?)).await?, false),
            };
            match conn {
                Conn::Http1(mut connection) => {
                    let sent = h1::Request {
                        method: request.method,
                        target: request.target,
                        host: origin.host.as_ref(),
                        headers: request.headers,
                        extra: request.extra,
                        body: request.body,
                    };
                    match connection.exchange(&sent, max_body).await {
                        Ok(answer) => {
                            if answer.reusable {
                                origin.push(connection);
                            }
                            return Ok(Answer {
                                status: answer.status,
                                headers: answer.headers,
                                body: answer.body,
                            });
                        }
                        // An idle connection the upstream closed as the request went out.
                        Err(h1::Error::Io {
                            received: false, ..
                        }) if reused && resendable(request) => continue,
                        Err(error) => return Err(SendError::Http1(error)),
                    }
                }
                Conn::Http2(mut sender) => {
                    let mut sent = http::Request::new(Body::new(request.body.clone()));
                    *sent.method_mut() = request.method.clone();
                    *sent.uri_mut() = request.uri()?;
                    let headers = sent.headers_mut();
                    headers.clone_from(request.headers);
                    for (name, value) in request.extra {
                        headers.insert(name, value.clone());
                    }
                    let response = match sender.try_send_request(sent).await {
                        Ok(response) => response,
                        Err(mut error) => {
                            // Not sent: the shared connection had closed. A new one is the
                            // only retry.
                            if error.take_message().is_some() && reused {
                                origin.shared.lock().expect("not poisoned").take();
                                continue;
                            }
                            return Err(SendError::Http2(error.into_error()));
                        }
                    };
                    let (parts, body) = response.into_parts();
                    let body = match http_body_util::Limited::new(body, max_body).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                            return Err(SendError::TooLarge(max_body));
                        }
                        Err(error) => {
                            return Err(match error.downcast::<hyper::Error>() {
                                Ok(error) => SendError::Http2(*error),
                                Err(other) => SendError::Connect(other),
                            });
                        }
                    };
                    return Ok(Answer {
                        status: parts.status,
                        headers: parts.headers,
                        body,
                    });
                }
            }
        }
    }

    async fn connect(&self, origin: &Arc<Origin>, uri: Uri) -> Result<Conn, SendError> {
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Http2)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            *origin.shared.lock().expect("not poisoned") = Some(sender.clone());
            Ok(Conn::Http2(sender))
        } else {
            Ok(Conn::Http1(Box::new(h1::Connection::new(TokioIo::new(io)))))
        }
    }
}

impl Outgoing<'_> {
    /// The URL parsed, for what needs it whole: a new connection, and HTTP/2's `:scheme`,
    /// `:authority` and `:path`. (HTTP/1.1 writes `target` and the origin's `Host` as text.)
    fn uri(&self) -> Result<Uri, SendError> {
        Uri::try_from(self.url).map_err(|e| SendError::Connect(Box::new(e)))
    }
}

/// Whether a request whose answer never began may be sent again: the upstream may have read
/// it before the connection closed, so only when a second copy cannot act twice, as Go's
/// client decides: a method that only reads, or an `Idempotency-Key` (a DELETE sent twice
/// would answer the second time that there was nothing to delete).
fn resendable(request: &Outgoing<'_>) -> bool {
    matches!(
        *request.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || request.headers.contains_key("idempotency-key")
}

impl Origin {
    /// A connection ready for a request: the shared HTTP/2 one, else the most recently used
    /// idle HTTP/1.1 one. Closed and expired connections found on the way are dropped.
    fn checkout(&self) -> Option<Conn> {
        {
            let mut shared = self.shared.lock().expect("not poisoned");
            if let Some(sender) = shared.as_ref() {
                if !sender.is_closed() {
                    return Some(Conn::Http2(sender.clone()));
                }
                *shared = None;
            }
        }
        let mut idle = self.idle.lock().expect("not poisoned");
        while let Some(mut entry) = idle.pop_back() {
            if entry.since.elapsed() < IDLE_TIMEOUT && entry.connection.is_open() {
                return Some(Conn::Http1(entry.connection));
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection whose answer was read whole for the next request.
    fn push(&self, connection: Box<h1::Connection<Stream>>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("not poisoned");
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        if self.max_idle > 0 {
            idle.push_back(Idle {
                connection,
                since: now,
            });
        }
    }
}

/// `host[:port]`, the port only when it is not the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    match uri.port_u16() {
        Some(port) if port != default => HeaderValue::try_from(format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Request;
    use hyper::Response;
    use hyper::body::Incoming;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn connector(roots: rustls::RootCertStore) -> HttpsConnector<HttpConnector> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp)
    }

    /// Sends a `method` request for `uri` through `pool` with `headers`; returns the answer's
    /// body as text.
    async fn call(
        pool: &Pool,
        method: Method,
        uri: &str,
        headers: &HeaderMap,
    ) -> Result<String, SendError> {
        let parsed: Uri = uri.parse().unwrap();
        let origin = pool.origin(&capgate_model::snapshot::origin_of(uri));
        let request = Outgoing {
            method: &method,
            url: uri,
            target: parsed.path_and_query().map_or("/", |p| p.as_str()),
            headers,
            extra: &HeaderMap::new(),
            body: &Bytes::new(),
        };
        let answer = pool.send(&origin, &request, 1 << 20).await?;
        Ok(String::from_utf8(answer.body.to_vec()).unwrap())
    }

    async fn get(pool: &Pool, uri: &str) -> String {
        call(pool, Method::GET, uri, &HeaderMap::new())
            .await
            .expect("answered")
    }

    /// A listener on a free port serving each connection it accepts with `serve` (in a task of
    /// its own); returns the port and the count of connections accepted.
    async fn counting_upstream<F, Fut>(serve: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (port, accepted)
    }

    /// An answer that keeps the connection open (HTTP/1.1's default).
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Reads one request's head (the requests here have no body); false if the connection
    /// closed first.
    async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// A plain HTTP/1.1 upstream answering each request with its target and `Host`.
    async fn echo_upstream() -> (u16, Arc<AtomicUsize>) {
        counting_upstream(|stream| async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let host = request.headers()[http::header::HOST].to_str().unwrap();
                let text = format!("{} {host}", request.uri());
                Ok::<_, std::convert::Infallible>(Response::new(Body::from(text)))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        })
        .await
    }

    #[tokio::test]
    async fn sequential_requests_share_one_http1_connection_in_origin_form() {
        let (port, accepted) = echo_upstream().await;
        let pool = Pool::new(connector(rustls::RootCertStore::empty()), 8, 8);
        for n in 0..3 {
            let body = get(&pool, &format!("http://127.0.0.1:{port}/v1/x?n={n}")).await;
            assert_eq!(body, format!("/v1/x?n={n} 127.0.0.1:{port}"));
        }
        let mut chosen = HeaderMap::new();
        chosen.insert(http::header::HOST, HeaderValue::from_static("chosen"));
        let uri = format!("http://127.0.0.1:{port}/v1/y");
        let body = call(&pool, Method::GET, &uri, &chosen).await.unwrap();
        assert_eq!(body, "/v1/y chosen", "the request's own Host is kept");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    }

    #[tokio::test]
    async fn a_request_the_upstream_dropped_unanswered_is_resent_only_when_that_cannot_act_twice() {
        // Answers the first request on each connection; reads the second and closes unanswered.
        let (port, accepted) = counting_upstream(|mut stream| async move {
            if read_request_head(&mut stream).await {
                stream.write_all(OK).await.unwrap();
                read_request_head(&mut stream).await;
            }
        })
        .await;
        let pool = Pool::new(connector(rustls::RootCertStore::empty()), 8, 8);
        let uri = format!("http://127.0.0.1:{port}/v1/x");
        assert_eq!(get(&pool, &uri).await, "ok");
        // The idle connection looks open; the GET on it is lost and sent again on a new one.
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST without an idempotency key may have acted: its failure is the caller's.
        let posted = call(&pool, Method::POST, &uri, &HeaderMap::new()).await;
        assert!(
            matches!(
                posted,
                Err(SendError::Http1(h1::Error::Io {
                    received: false,
                    ..
                }))
            ),
            "{posted:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // With one, it is sent again.
        assert_eq!(get(&pool, &uri).await, "ok");
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", HeaderValue::from_static("k1"));
        let posted = call(&pool, Method::POST, &uri, &keyed).await.unwrap();
        assert_eq!(posted, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        // Answers one request per connection, keep-alive announced, then closes without a word.
        let (port, accepted) = counting_upstream(|mut stream| async move {
            if read_request_head(&mut stream).await {
                stream.write_all(OK).await.unwrap();
            }
        })
        .await;
        let pool = Pool::new(connector(rustls::RootCertStore::empty()), 8, 8);
        let uri = format!("http://127.0.0.1:{port}/v1/x");
        assert_eq!(get(&pool, &uri).await, "ok");
        // Give the upstream's close the time to arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn idle_connections_are_kept_at_most_max_idle() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (port, accepted) = echo_upstream().await;
            let pool = Pool::new(connector(rustls::RootCertStore::empty()), 1, 8);
            let uri = format!("http://127.0.0.1:{port}/");
            let origin = pool.origin(&capgate_model::snapshot::origin_of(&uri));
            // Two requests at once take two connections; only one is kept afterwards.
            let (first, second) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
            let expected = format!("/ 127.0.0.1:{port}");
            assert_eq!([first, second], [expected.clone(), expected]);
            assert_eq!(origin.idle.lock().unwrap().len(), 1);
            get(&pool, &uri).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        });
    }

    /// An upstream on TLS for `localhost` offering `alpn`, answering each request with its
    /// target and version; returns its port, the connections it accepted, and the client's
    /// roots that trust it.
    async fn tls_upstream(alpn: &[&[u8]]) -> (u16, Arc<AtomicUsize>, rustls::RootCertStore) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (port, accepted) = counting_upstream(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let stream = acceptor.accept(stream).await.unwrap();
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let text = format!("{} {:?}", request.uri(), request.version());
                    Ok::<_, std::convert::Infallible>(Response::new(Body::from(text)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        (port, accepted, roots)
    }

    #[tokio::test]
    async fn tls_that_negotiates_http2_shares_one_connection() {
        let (port, accepted, roots) = tls_upstream(&[b"h2", b"http/1.1"]).await;
        let pool = Pool::new(connector(roots), 8, 8);
        let uri = format!("https://localhost:{port}/v1/x");
        let (first, second) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
        for body in [first, second, get(&pool, &uri).await] {
            assert_eq!(body, format!("https://localhost:{port}/v1/x HTTP/2.0"));
        }
        assert!(
            accepted.load(Ordering::SeqCst) <= 2,
            "at most the two racing requests connect"
        );
        let before = accepted.load(Ordering::SeqCst);
        get(&pool, &uri).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            before,
            "the shared one is reused"
        );
    }

    #[tokio::test]
    async fn http1_over_tls_reuses_its_connection() {
        let (port, accepted, roots) = tls_upstream(&[b"http/1.1"]).await;
        let pool = Pool::new(connector(roots), 8, 8);
        let uri = format!("https://localhost:{port}/v1/x?n=1");
        for _ in 0..3 {
            assert_eq!(get(&pool, &uri).await, "/v1/x?n=1 HTTP/1.1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_host_header_names_a_port_only_when_it_is_not_the_default() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).unwrap();
        assert_eq!(host("https://api.stripe.com/v1/x"), "api.stripe.com");
        assert_eq!(host("https://api.stripe.com:443/v1/x"), "api.stripe.com");
        assert_eq!(host("http://127.0.0.1:8111/v1/x"), "127.0.0.1:8111");
        assert_eq!(host("http://example.com:80/"), "example.com");
        assert_eq!(host("https://example.com:80/"), "example.com:80");
    }
}
