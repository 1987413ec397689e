//! Upstream budgets: a rate per upstream account, so the gateway spaces its calls (a bounded
//! wait) or sheds them (503) before the upstream starts answering 429.
//!
//! Stripe limits each account: about 25 requests a second in test mode and 100 in live mode.
//! An account is the credentials a call carries (its `Authorization`) and, with Stripe
//! Connect, its `Stripe-Account`: the pair is hashed, never kept or shown. The mode is read
//! from the key's prefix (`sk_live_` / `rk_live_`: live), at the origins of
//! `stripe_origins` (api.stripe.com; a stand-in has no such limits). Each attempt counts, retries
//! included. With `limits.replicas` above 1, each replica takes its share of every rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

use capgate_model::config::{ProfileName, UpstreamBudget};

/// The accounts' theoretical arrival times (GCRA), in seconds since `epoch`.
#[derive(Debug)]
pub(super) struct Budgets {
    config: UpstreamBudget,
    /// `config.stripe_origins` as adapters' origins are written (`https://api.stripe.com:443`).
    stripe_origins: Vec<String>,
    share: f64,
    arrivals: Mutex<HashMap<[u8; 16], f64>>,
    epoch: Instant,
}

/// A call the budget cannot take within `max_wait`: retry after the duration.
#[derive(Debug)]
pub(super) struct Shed(pub Duration);

impl Budgets {
    pub(super) fn new(config: &UpstreamBudget, replicas: u32) -> Budgets {
        Budgets {
            stripe_origins: config
                .stripe_origins
                .iter()
                .map(|o| capgate_model::snapshot::origin_of(o))
                .collect(),
            config: config.clone(),
            share: f64::from(replicas.max(1)),
            arrivals: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// The rate for a call with these headers to `origin`, an upstream of `profile` (0: no
    /// budget).
    fn rate(&self, origin: &str, profile: ProfileName, headers: &HeaderMap) -> f64 {
        match profile {
            ProfileName::Stripe if self.stripe_origins.iter().any(|o| o == origin) => {
                let key = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let key = key.strip_prefix("Bearer ").unwrap_or(key);
                if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
                    self.config.stripe_live_rate
                } else {
                    self.config.stripe_test_rate
                }
            }
            _ => self.config.default_rate,
        }
    }

    /// Waits for room in the account's budget, or sheds the call when that would take longer
    /// than `max_wait`.
    pub(super) async fn take(
        &self,
        origin: &str,
        profile: ProfileName,
        headers: &HeaderMap,
    ) -> Result<(), Shed> {
        let rate = self.rate(origin, profile, headers) / self.share;
        if rate <= 0.0 {
            return Ok(());
        }
        let wait = self.reserve(account(origin, headers), rate)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Reserves the account's next slot: how long until it comes.
    fn reserve(&self, account: [u8; 16], rate: f64) -> Result<Duration, Shed> {
        let interval = 1.0 / rate;
        // A second's worth at once.
        let tolerance = interval * (rate.ceil() - 1.0).max(0.0);
        let now = self.epoch.elapsed().as_secs_f64();
        let mut arrivals = self.arrivals.lock().expect("not poisoned");
        let tat = arrivals.get(&account).copied().unwrap_or(now).max(now);
        let wait = (tat - now - tolerance).max(0.0);
        if wait > self.config.max_wait.as_secs_f64() {
            return Err(Shed(Duration::from_secs_f64(
                wait - self.config.max_wait.as_secs_f64(),
            )));
        }
        arrivals.insert(account, tat + interval);
        Ok(Duration::from_secs_f64(wait))
    }
}

/// The account a call is made as: its origin, credentials and connected account, hashed.
fn account(origin: &str, headers: &HeaderMap) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(origin.as_bytes());
    for name in [http::header::AUTHORIZATION.as_str(), "stripe-account"] {
        hash.update([0]);
        if let Some(value) = headers.get(name) {
            hash.update(value.as_bytes());
        }
    }
    let digest = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRIPE: &str = "https://api.stripe.com:443";

    fn budgets(max_wait_ms: u64) -> Budgets {
        Budgets::new(
            &UpstreamBudget {
                stripe_test_rate: 10.0,
                stripe_live_rate: 100.0,
                default_rate: 0.0,
                stripe_origins: vec!["https://api.stripe.com".into()],
                max_wait: Duration::from_millis(max_wait_ms),
            },
            1,
        )
    }

    fn key(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").try_into().unwrap(),
        );
        headers
    }

    #[test]
    fn a_burst_of_a_second_then_spaced_then_shed() {
        let b = budgets(250);
        let test = key("sk_test_1");
        let account = account("https://api.stripe.com", &test);
        let rate = b.rate(STRIPE, ProfileName::Stripe, &test);
        assert_eq!(rate, 10.0);
        // Ten at once (a second's worth), then each 100 ms later, up to 250 ms of waiting.
        let waits: Vec<u128> = (0..12)
            .map(|_| b.reserve(account, rate).unwrap().as_millis())
            .collect();
        assert!(waits[..10].iter().all(|w| *w == 0), "{waits:?}");
        assert!((95..=100).contains(&waits[10]), "{waits:?}");
        assert!((195..=200).contains(&waits[11]), "{waits:?}");
        // The next would wait 300 ms: shed, and the shed call takes no slot.
        assert!(b.reserve(account, rate).is_err());
        assert!(b.reserve(account, rate).is_err());
    }

    #[test]
    fn accounts_and_modes_have_their_own_budgets() {
        let b = budgets(0);
        assert_eq!(
            b.rate(STRIPE, ProfileName::Stripe, &key("sk_live_1")),
            100.0
        );
        assert_eq!(
            b.rate(STRIPE, ProfileName::Stripe, &key("rk_live_1")),
            100.0
        );
        assert_eq!(b.rate(STRIPE, ProfileName::Default, &key("sk_live_1")), 0.0);
        let stand_in = "http://127.0.0.1:12111";
        assert_eq!(
            b.rate(stand_in, ProfileName::Stripe, &key("sk_test_1")),
            0.0
        );
        let one = account("https://api.stripe.com", &key("sk_test_1"));
        let mut connected = key("sk_test_1");
        connected.insert("stripe-account", "acct_2".try_into().unwrap());
        let two = account("https://api.stripe.com", &connected);
        assert_ne!(one, two);
        for _ in 0..10 {
            b.reserve(one, 10.0).unwrap();
        }
        assert!(b.reserve(one, 10.0).is_err());
        assert!(b.reserve(two, 10.0).is_ok(), "another connected account");
    }
}
