//! Calling upstream APIs: building the request from a call's arguments (`prepare`), encoding
//! it by the upstream's profile and adding auth (`encode`), sending it with timeouts, a bounded
//! number of requests per origin and retries (`client`) over connections kept per origin
//! (`pool`; HTTP/1.1 exchanges in `h1`, HTTP/2 on hyper); forward routes pass a caller's request on (`forward`).
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
mod h1;
mod pool;
mod prepare;

pub use client::Client;
pub use forward::{forward_request, with_fixed};
pub use prepare::prepare;

/// A random identifier of 24 lowercase alphanumerics.
pub fn random_id() -> String {
    let mut id = [0u8; RANDOM_ID_LEN];
    fill_random_id(&mut id);
    std::str::from_utf8(&id).expect("ASCII").to_owned()
}

/// The length of `random_id`'s ids.
pub const RANDOM_ID_LEN: usize = 24;

/// Fills `out` with `random_id`'s characters: each from one random byte, bytes of 252 and
/// above (where `% 36` would favour the first four characters) drawn again. One draw of 32
/// bytes almost always suffices; a `random_range` per character cost about 1,000 more
/// instructions per request (callgrind; BENCHMARKS.md, issue 22).
pub fn fill_random_id(out: &mut [u8]) {
    use rand::RngCore;
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const UNBIASED: u8 = 252; // 7 * 36
    let mut rng = rand::rng();
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < out.len() {
        rng.fill_bytes(&mut bytes);
        for &byte in bytes.iter().filter(|&&b| b < UNBIASED) {
            let Some(slot) = out.get_mut(filled) else {
                break;
            };
            *slot = ALPHABET[usize::from(byte % 36)];
            filled += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_ids_are_24_lowercase_alphanumerics_and_cover_the_alphabet() {
        let ids: Vec<String> = (0..500).map(|_| super::random_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), super::RANDOM_ID_LEN, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{id}"
            );
        }
        let seen: std::collections::BTreeSet<u8> = ids.iter().flat_map(|i| i.bytes()).collect();
        assert_eq!(seen.len(), 36, "all 36 characters appear in 12,000");
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
