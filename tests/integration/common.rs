//! Shared helpers: paths to the shared material, and a gateway in front of the Stripe stand-in
//! on OS-chosen ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capgate::Gateway;
use capgate::config::{Config, UpstreamOverride};
use capgate::stripe_sim::{self, StripeSim};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The copies of the shared material under `tests/data` (the corpus, the format's examples,
/// Stripe's OpenAPI).
pub fn shared() -> PathBuf {
    root().join("tests/data")
}

pub fn corpus() -> PathBuf {
    shared().join("corpus/stripe-capabilities")
}

/// The test key the gateway sends to the stand-in.
pub const KEY: &str = stripe_sim::DEMO_KEY;

/// A gateway serving a temporary specs folder, every consumes adapter pointed at a fresh
/// Stripe stand-in, every declared port bound to a port the OS chose.
pub struct Harness {
    pub sim: StripeSim,
    pub gateway: Gateway,
    /// Kept alive for the gateway's lifetime.
    pub _specs: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Harness {
    /// Serves the shipped `specs/` folder.
    pub async fn seed() -> Harness {
        let seed = std::fs::read_to_string(root().join("specs/identity-sessions.yaml")).unwrap();
        Harness::with_specs(&[("identity-sessions.yaml", &seed)], |_| {}).await
    }

    /// Serves the given files; `adjust` may change the config before start.
    pub async fn with_specs(files: &[(&str, &str)], adjust: impl FnOnce(&mut Config)) -> Harness {
        let sim = StripeSim::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let specs = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = specs.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let mut config = test_config(specs.path(), &sim);
        adjust(&mut config);
        let gateway = Gateway::start(config).await;
        Harness {
            sim,
            gateway,
            _specs: specs,
            http: reqwest::Client::builder().build().unwrap(),
        }
    }

    /// Serves an existing folder as it is.
    pub async fn with_dir(dir: &Path) -> Harness {
        let sim = StripeSim::start(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let config = test_config(dir, &sim);
        let gateway = Gateway::start(config).await;
        Harness {
            sim,
            gateway,
            _specs: tempfile::tempdir().unwrap(),
            http: reqwest::Client::builder().build().unwrap(),
        }
    }

    /// `http://ADDR` of the listener for a declared port.
    pub async fn base(&self, declared_port: u16) -> String {
        let addr = self
            .gateway
            .local_addr(declared_port)
            .await
            .unwrap_or_else(|| panic!("no listener for declared port {declared_port}"));
        format!("http://{addr}")
    }

    /// The seed's REST base: `http://ADDR/v1/v1/identity/verification-sessions`.
    pub async fn sessions(&self) -> String {
        format!(
            "{}/v1/v1/identity/verification-sessions",
            self.base(8080).await
        )
    }
}

/// The config tests use: ephemeral ports, no admin listener, no watching, fast retries, the
/// stand-in as every upstream and its key as `STRIPE_API_KEY`.
pub fn test_config(specs: &Path, sim: &StripeSim) -> Config {
    let mut config = Config {
        specs: specs.to_path_buf(),
        ..Config::default()
    };
    config.listen.ephemeral_ports = true;
    config.listen.force_address = Some([127, 0, 0, 1].into());
    config.admin.address = None;
    config.reload.watch = false;
    config.retry.base_delay = Duration::from_millis(5);
    config.retry.max_delay = Duration::from_millis(20);
    config.upstreams.push(UpstreamOverride {
        namespace: "*".into(),
        base_uri: Some(sim.base_url()),
        profile: None,
    });
    config.env.insert("STRIPE_API_KEY".into(), KEY.into());
    config
}

/// Creates a session through the stand-in directly and returns its id.
pub async fn create_session_directly(sim: &StripeSim) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/v1/identity/verification_sessions",
            sim.base_url()
        ))
        .bearer_auth(KEY)
        .form(&[("type", "document")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["id"].as_str().unwrap().to_owned()
}
