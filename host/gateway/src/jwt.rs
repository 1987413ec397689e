//! JWT bearer tokens from the issuers of `consumers.jwt`: signature (RS256, ES256, EdDSA, with
//! the issuer's JWKS), issuer, audience, `exp` / `nbf` with a small leeway, then the claims
//! that name the consumer and carry its scopes.
//!
//! Each issuer's keys are an `ArcSwap` read by requests; they are refreshed every `refresh`
//! (a file re-read, a URL fetched within `timeout`) and when a token names a key id not yet
//! known (at most every 10 s, one fetch at a time: the others wait for it, bounded by the
//! timeout). A failed refresh keeps the keys there were. A refusal says what is wrong with the
//! token, never which consumers exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use capgate_model::config::JwtIssuer;
use capgate_model::consumers::Scope;

/// The least time between two fetches a token with an unknown key id asks for (or `refresh`,
/// when shorter).
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Every configured issuer.
pub struct Issuers {
    issuers: Vec<Arc<Issuer>>,
}

struct Issuer {
    config: JwtIssuer,
    keys: ArcSwap<Keys>,
    /// When keys were last fetched; held while a fetch is in progress.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`, tried in turn for a token without one.
    unnamed: Vec<(DecodingKey, Algorithm)>,
}

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The consumer the token names (not yet checked against the consumers file).
    pub consumer: String,
    /// What its scopes claim grants, when it has one.
    pub scopes: Option<Arc<[Scope]>>,
    /// `iss` and `kid`, for logs.
    pub credential: String,
}

impl Issuers {
    pub fn new(configs: &[JwtIssuer]) -> Issuers {
        // Built only when there is an issuer to fetch keys from.
        let http = (!configs.is_empty()).then(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tls_backend_preconfigured(crate::tls::client_config())
                .build()
                .unwrap_or_default()
        });
        let issuers = configs
            .iter()
            .map(|config| {
                Arc::new(Issuer {
                    config: config.clone(),
                    keys: ArcSwap::from_pointee(Keys::default()),
                    fetched: tokio::sync::Mutex::new(None),
                    http: http.clone().unwrap_or_default(),
                })
            })
            .collect();
        Issuers { issuers }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The issuers' names, for the protected resource metadata.
    pub fn names(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect()
    }

    /// Fetches every issuer's keys now, then every `refresh`, on the current runtime.
    pub fn start_refreshing(&self) {
        for issuer in &self.issuers {
            let issuer = issuer.clone();
            tokio::spawn(async move {
                loop {
                    issuer.refresh().await;
                    tokio::time::sleep(issuer.config.refresh.max(Duration::from_secs(1))).await;
                }
            });
        }
    }

    /// Whether `token` looks like a JWT (three base64url parts) rather than an API key.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && !token.starts_with("cg_")
    }

    /// Verifies `token`; what is wrong with it otherwise (for `error_description`).
    pub async fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is malformed")?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err("the token's algorithm is not accepted (RS256, ES256 or EdDSA)");
        }
        let claimed_issuer = unverified_issuer(token).ok_or("the token is malformed")?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == claimed_issuer)
            .ok_or("the token's issuer is not trusted here")?;
        let claims = issuer
            .check(token, header.alg, header.kid.as_deref())
            .await?;
        issuer.verified(&claims, header.kid.as_deref())
    }
}

/// The `iss` of a token's payload, before its signature is checked (to pick the issuer whose
/// keys check it).
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

impl Issuer {
    /// The token's claims once its signature, issuer, audience and times hold.
    async fn check(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Value, &'static str> {
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.leeway_seconds;
        validation.validate_nbf = true;
        let candidates = match self.keys_for(alg, kid) {
            Some(candidates) => candidates,
            None => {
                // A key id not seen yet: the issuer may have rotated its keys.
                self.refresh_for_unknown_kid().await;
                self.keys_for(alg, kid)
                    .ok_or("the token is signed by a key this issuer does not publish")?
            }
        };
        let mut last = "the token's signature does not verify";
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => last = describe(error.kind()),
            }
        }
        Err(last)
    }

    /// The keys that may have signed a token with `alg` and `kid`.
    fn keys_for(&self, alg: Algorithm, kid: Option<&str>) -> Option<Vec<DecodingKey>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => {
                let (key, key_alg) = keys.by_kid.get(kid)?;
                // A key is used only with its own algorithm.
                (*key_alg == alg).then(|| vec![key.clone()])
            }
            None => {
                let keys: Vec<DecodingKey> = keys
                    .unnamed
                    .iter()
                    .filter(|(_, a)| *a == alg)
                    .map(|(k, _)| k.clone())
                    .collect();
                (!keys.is_empty()).then_some(keys)
            }
        }
    }

    fn verified(&self, claims: &Value, kid: Option<&str>) -> Result<Verified, &'static str> {
        let consumer = claims
            .get(&self.config.consumer_claim)
            .and_then(Value::as_str)
            .ok_or("the token names no consumer")?;
        let scopes = claims.get(&self.config.scopes_claim).map(|value| {
            let tokens: Vec<&str> = match value {
                Value::String(text) => text.split_whitespace().collect(),
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            tokens
                .into_iter()
                .filter_map(Scope::from_token)
                .collect::<Arc<[Scope]>>()
        });
        Ok(Verified {
            consumer: consumer.to_owned(),
            scopes,
            credential: format!("jwt {} {}", self.config.issuer, kid.unwrap_or("-")),
        })
    }

    /// Fetches the keys unless another request just did (or is doing it now).
    async fn refresh_for_unknown_kid(&self) {
        let mut fetched = self.fetched.lock().await;
        let interval = UNKNOWN_KID_INTERVAL.min(self.config.refresh);
        if fetched.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        self.refresh_holding(&mut fetched).await;
    }

    /// Fetches (or re-reads) the keys; a failure keeps the keys there were.
    async fn refresh(&self) {
        let mut fetched = self.fetched.lock().await;
        self.refresh_holding(&mut fetched).await;
    }

    async fn refresh_holding(&self, fetched: &mut Option<Instant>) {
        *fetched = Some(Instant::now());
        let issuer = &self.config.issuer;
        match tokio::time::timeout(self.config.timeout, self.fetch()).await {
            Ok(Ok(keys)) => {
                tracing::debug!(%issuer, keys = keys.by_kid.len() + keys.unnamed.len(), "JWKS loaded");
                self.keys.store(Arc::new(keys));
            }
            Ok(Err(error)) => {
                tracing::warn!(%issuer, "cannot load the issuer's JWKS ({error}); its last keys stay");
            }
            Err(_) => tracing::warn!(
                %issuer,
                "the issuer's JWKS did not arrive within {:?}; its last keys stay",
                self.config.timeout
            ),
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let bytes = if let Some(file) = &self.config.jwks_file {
            capgate_model::read::bytes(file, MAX_JWKS_BYTES as u64).map_err(|e| e.to_string())?
        } else if let Some(url) = &self.config.jwks_url {
            let response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("fetch failed: {}", e.without_url()))?;
            if !response.status().is_success() {
                return Err(format!("the JWKS URL answered {}", response.status()));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if bytes.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            bytes.to_vec()
        } else {
            return Err("no JWKS configured".into());
        };
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Keys::default();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                // Shared secrets have no place in a published key set.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), (key, alg));
                }
                None => keys.unnamed.push((key, alg)),
            }
        }
        Ok(keys)
    }
}

/// What a validation error means to the caller.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token's issuer is not trusted here",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp)",
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
        _ => "the token's signature does not verify",
    }
}
