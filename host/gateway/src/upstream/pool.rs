//! Connections to upstream origins, on hyper's connection API: per origin, a stack of idle
//! HTTP/1.1 connections (the most recently used first) or one shared HTTP/2 connection, and the
//! bound on concurrent requests.
//!
//! hyper-util's pooled client did the same with more per request: a pool key built, cloned and
//! hashed under the pool's lock, a connect future raced against the checkout, and, for HTTP/1,
//! a task spawned on every request to return the connection once its body was read
//! (BENCHMARKS.md, issue 22). Here an origin is looked up once per call and a connection goes
//! back on its stack when the caller has read the whole body, with no task in between.
//!
//! What the pooled client did that callers can see is kept: `Host` set from the URL unless the
//! request sets it, HTTP/2 when TLS negotiates it by ALPN, a request that a reused connection
//! closed under before sending it sent again on a new connection, idle connections kept at
//! most `upstream_max_idle` per origin and for at most [`IDLE_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tower_service::Service;

type Body = Full<Bytes>;

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
#[derive(Debug)]
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

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// A connection checked out for one request.
pub(super) enum Conn {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// Why a request could not be sent.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made (the connector's error).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or its answer read.
    Exchange(hyper::Error),
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

    /// Sends `request` (its URI absolute) to `origin`: on an idle connection if there is one, and
    /// again on a new connection if that one closed before the request went out.
    pub(super) async fn send(
        &self,
        origin: &Arc<Origin>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let uri = request.uri().clone();
        loop {
            let (mut conn, reused) = match origin.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS, an HTTP/2 handshake) is the rare path, and its state
                // would otherwise sit in every request's future, copied each time it moves.
                None => (Box::pin(self.connect(origin, &uri)).await?, false),
            };
            let sent = match &mut conn {
                Conn::Http1(sender) => {
                    to_origin_form(&mut request, &uri, origin.host.as_ref());
                    sender.try_send_request(request).await
                }
                Conn::Http2(sender) => {
                    *request.uri_mut() = uri.clone();
                    sender.try_send_request(request).await
                }
            };
            match sent {
                Ok(response) => return Ok((response, conn)),
                Err(mut error) => match error.take_message() {
                    // Not sent: the idle connection had closed. A new one is the only retry.
                    Some(unsent) if reused => {
                        if matches!(conn, Conn::Http2(_)) {
                            origin.shared.lock().expect("not poisoned").take();
                        }
                        request = unsent;
                    }
                    _ => return Err(SendError::Exchange(error.into_error())),
                },
            }
        }
    }

    async fn connect(&self, origin: &Arc<Origin>, uri: &Uri) -> Result<Conn, SendError> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Exchange)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            *origin.shared.lock().expect("not poisoned") = Some(sender.clone());
            Ok(Conn::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(SendError::Exchange)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
            Ok(Conn::Http1(sender))
        }
    }
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
        while let Some(entry) = idle.pop_back() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(Conn::Http1(entry.sender));
            }
        }
        None
    }

    /// Takes back `conn` once the answer it carried was read whole. An HTTP/1.1 connection
    /// that is not ready yet is taken back when it is, from a task of its own.
    pub(super) fn check_in(self: &Arc<Self>, conn: Conn) {
        let Conn::Http1(mut sender) = conn else {
            return; // HTTP/2: the shared sender stays with the origin.
        };
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            let origin = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    origin.push(sender);
                }
            });
        }
    }

    fn push(&self, sender: http1::SendRequest<Body>) {
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
            idle.push_back(Idle { sender, since: now });
        }
    }
}

/// An HTTP/1.1 request's target: the path and query alone, the authority in `Host` (unless the
/// request sets its own).
fn to_origin_form(request: &mut Request<Body>, uri: &Uri, host: Option<&HeaderValue>) {
    if !request.headers().contains_key(http::header::HOST)
        && let Some(host) = host
    {
        request
            .headers_mut()
            .insert(http::header::HOST, host.clone());
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    if let Ok(origin_form) = Uri::from_parts(parts) {
        *request.uri_mut() = origin_form;
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

    use http_body_util::BodyExt;
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

    /// Sends a GET of `uri` through `pool`, reads the whole answer and gives the connection
    /// back, as the client does.
    async fn get(pool: &Pool, uri: &str) -> (http::Version, String) {
        let uri: Uri = uri.parse().unwrap();
        let origin = pool.origin(&capgate_model::snapshot::origin_of(&uri.to_string()));
        let mut request = Request::new(Body::default());
        *request.uri_mut() = uri;
        let (response, conn) = pool.send(&origin, request).await.expect("sent");
        let version = response.version();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        origin.check_in(conn);
        (version, String::from_utf8(body.to_vec()).unwrap())
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
    async fn sequential_requests_share_one_http1_connection() {
        let (port, accepted) = echo_upstream().await;
        let pool = Pool::new(connector(rustls::RootCertStore::empty()), 8, 8);
        for n in 0..3 {
            let (version, body) = get(&pool, &format!("http://127.0.0.1:{port}/v1/x?n={n}")).await;
            assert_eq!(version, http::Version::HTTP_11);
            assert_eq!(body, format!("/v1/x?n={n} 127.0.0.1:{port}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        // Answers one request per connection, keep-alive announced, then closes without a word.
        let (port, accepted) = counting_upstream(|mut stream| async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(answer.as_bytes()).await.unwrap();
        })
        .await;
        let pool = Pool::new(connector(rustls::RootCertStore::empty()), 8, 8);
        let uri = format!("http://127.0.0.1:{port}/v1/x");
        assert_eq!(get(&pool, &uri).await.1, "ok");
        // Give the connection's task the time to read the upstream's close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&pool, &uri).await.1, "ok");
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
            let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
            let origin = pool.origin(&capgate_model::snapshot::origin_of(&uri.to_string()));
            // Two requests at once take two connections; only one is kept afterwards.
            let mut conns = Vec::new();
            for _ in 0..2 {
                let mut request = Request::new(Body::default());
                *request.uri_mut() = uri.clone();
                let (response, conn) = pool.send(&origin, request).await.unwrap();
                conns.push((response, conn));
            }
            for (response, conn) in conns {
                response.into_body().collect().await.unwrap();
                origin.check_in(conn);
            }
            // A connection not ready at once is taken back by a task of its own.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(origin.idle.lock().unwrap().len(), 1);
            get(&pool, uri.to_string().as_str()).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        });
    }

    #[tokio::test]
    async fn tls_that_negotiates_http2_shares_one_connection() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (port, accepted) = counting_upstream(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let stream = acceptor.accept(stream).await.unwrap();
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let text = format!("{} {:?}", request.uri(), request.version());
                    Ok::<_, std::convert::Infallible>(Response::new(Body::from(text)))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let pool = Pool::new(connector(roots), 8, 8);
        let uri = format!("https://localhost:{port}/v1/x");
        let (first, second) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
        for (version, body) in [first, second, get(&pool, &uri).await] {
            assert_eq!(version, http::Version::HTTP_2);
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

    #[test]
    fn the_host_header_names_a_port_only_when_it_is_not_the_default() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).unwrap();
        assert_eq!(host("https://api.stripe.com/v1/x"), "api.stripe.com");
        assert_eq!(host("https://api.stripe.com:443/v1/x"), "api.stripe.com");
        assert_eq!(host("http://127.0.0.1:8111/v1/x"), "127.0.0.1:8111");
        assert_eq!(host("http://example.com:80/"), "example.com");
        assert_eq!(host("https://example.com:80/"), "example.com:80");
    }

    #[test]
    fn an_http1_request_goes_out_in_origin_form() {
        let uri: Uri = "http://127.0.0.1:8111/v1/identity?expand[]=a"
            .parse()
            .unwrap();
        let host = host_header(&uri);
        let mut request = Request::new(Body::default());
        to_origin_form(&mut request, &uri, host.as_ref());
        assert_eq!(request.uri().to_string(), "/v1/identity?expand[]=a");
        assert_eq!(request.headers()[http::header::HOST], "127.0.0.1:8111");

        let mut request = Request::new(Body::default());
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("chosen"));
        to_origin_form(&mut request, &uri, host.as_ref());
        assert_eq!(request.headers()[http::header::HOST], "chosen");
    }
}
