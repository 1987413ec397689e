//! The TLS settings of every outgoing connection (upstreams, JWKS): rustls with ring, verified
//! against the platform's roots. Loading the roots reads and parses the system's certificate
//! store (5-15 ms), so it happens once per process, not once per client.

use std::sync::LazyLock;

/// The client configuration, built on first use and cloned (cheaply: its parts are `Arc`s) for
/// each client.
pub fn client_config() -> rustls::ClientConfig {
    static CONFIG: LazyLock<rustls::ClientConfig> = LazyLock::new(|| {
        use rustls_platform_verifier::ConfigVerifierExt;
        // One TLS stack (rustls with ring); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        rustls::ClientConfig::with_platform_verifier()
            .expect("the platform's certificate verifier starts")
    });
    CONFIG.clone()
}
