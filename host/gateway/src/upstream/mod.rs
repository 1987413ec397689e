//! Calling upstream APIs: building the request from a call's arguments (`prepare`), encoding
//! it by the upstream's profile and adding auth (`encode`), sending it with timeouts, a bounded
//! number of requests per origin and retries (`client`) over connections kept per origin
//! (`pool`); forward routes pass a caller's request on (`forward`).
//!
//! This is the only module that holds the HTTP client, and (with `auth`, which compares
//! callers' credentials) the only one that reads secret values (`Secret::expose`): when
//! templates render bound variables and when a request is encoded, after request transforms
//! ran. [`prepare`] builds an `UpstreamRequest` that plugins may see (no auth, body still
//! JSON); [`Client::send`] encodes and sends it.

mod budget;
mod client;
mod encode;
mod forward;
mod pool;
mod prepare;

pub use client::Client;
pub use forward::{forward_request, with_fixed};
pub use prepare::prepare;

/// A random identifier of 24 lowercase alphanumerics.
pub fn random_id() -> String {
    let mut id = String::with_capacity(RANDOM_ID_LEN);
    push_random_id(&mut id);
    id
}

/// The length of `random_id`'s ids.
pub const RANDOM_ID_LEN: usize = 24;

/// Appends `random_id`'s characters to `out`.
pub fn push_random_id(out: &mut String) {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    out.extend((0..RANDOM_ID_LEN).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char));
}
