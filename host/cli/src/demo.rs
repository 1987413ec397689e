//! `capgate demo`: the Stripe stand-in and the gateway on the shipped specs, in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use capgate::gateway::Gateway;
use capgate_model::config::{Config, Requirement, UpstreamOverride};
use stripe_sim::StripeSim;

use crate::consumer;

/// The demo consumer's limit: low enough that a short loop of `curl`s meets it.
const DEMO_LIMIT: &str = "{ rate: 1, burst: 5 }";

/// Starts the stand-in on a free port, points every consumes adapter at it, serves `specs`,
/// prints where everything is and a few ready commands, and runs until `shutdown`. With
/// `with_consumer`, every adapter requires a consumer's key, and the demo makes one consumer
/// (in a consumers file of a temporary folder, removed at exit) and prints its key.
pub async fn run(
    specs: PathBuf,
    with_consumer: bool,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let sim = StripeSim::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut config = Config {
        specs,
        ..Config::default()
    };
    let folder = with_consumer.then(tempfile::tempdir).transpose()?;
    let key = match &folder {
        Some(folder) => {
            let file = folder.path().join("consumers.yaml");
            let scope = consumer::ScopeArgs {
                capability: "*",
                adapter: "*",
                name: "*",
                access: "any",
            };
            let key = consumer::add_with_limits(&file, "demo", &scope, &[DEMO_LIMIT])
                .map_err(std::io::Error::other)?;
            config.consumers.file = Some(file);
            config.consumers.require = vec![Requirement::default()];
            Some(key)
        }
        None => None,
    };
    config.upstreams.push(UpstreamOverride {
        namespace: "*".into(),
        base_uri: Some(sim.base_url()),
        profile: None,
    });
    config
        .env
        .insert("STRIPE_API_KEY".into(), stripe_sim::DEMO_KEY.into());
    let gateway = capgate::start(config).await;
    println!("{}", banner(&gateway, &sim, key.as_deref()).await);
    shutdown.await;
    gateway.shutdown().await;
    sim.shutdown();
    drop(folder);
    Ok(())
}

async fn banner(gateway: &Gateway, sim: &StripeSim, key: Option<&str>) -> String {
    let snapshot = gateway.snapshot();
    let mut out = String::new();
    out.push_str("capgate demo\n\n");
    out.push_str(&format!(
        "  Stripe stand-in   {} (test key {})\n",
        sim.base_url(),
        stripe_sim::DEMO_KEY
    ));
    let mut rest_example = None;
    let mut mcp_example = None;
    for (key, address) in gateway.listeners().await {
        let Some(listener) = snapshot.listener(&key) else {
            continue;
        };
        if !listener.rest.is_empty() {
            out.push_str(&format!(
                "  REST              http://{address}  ({} routes)\n",
                listener.rest.len()
            ));
            rest_example.get_or_insert(address);
        }
        for (namespace, adapter) in &listener.mcp {
            out.push_str(&format!(
                "  MCP               http://{address}/mcp/{namespace}  ({} tools)\n",
                adapter.tools.len()
            ));
            mcp_example.get_or_insert((address, namespace.clone()));
        }
    }
    let failing: Vec<_> = gateway
        .status()
        .into_iter()
        .filter(|f| {
            !matches!(
                f.state,
                capgate::reload::FileState::Serving | capgate::reload::FileState::Ignored
            )
        })
        .collect();
    for file in failing {
        out.push_str(&format!(
            "  note: {} is {:?}; see `capgate validate`\n",
            file.path.display(),
            file.state
        ));
    }
    if let Some(key) = key {
        out.push_str(&format!(
            "  Consumer          demo, key {key}\n                    (shown once; 1 call per second, bursts of 5; every adapter requires a key)\n"
        ));
    }
    // How a command sends the key, if one is needed.
    let curl_auth = key
        .map(|key| format!(" -H 'Authorization: Bearer {key}'"))
        .unwrap_or_default();
    if let Some(address) = rest_example {
        let base = format!("http://{address}/v1/v1/identity/verification-sessions");
        out.push_str("\nTry:\n");
        out.push_str(&format!(
            "  curl -s{curl_auth} -X POST {base} -d type=document -d 'metadata[order]=6735'\n"
        ));
        out.push_str(&format!(
            "  curl -s{curl_auth} '{base}?limit=3&expand[]=data.verified_outputs'\n"
        ));
        out.push_str(&format!(
            "  curl -s{curl_auth} -X POST {base}/vs_REPLACE_ME/cancel\n"
        ));
        if key.is_some() {
            out.push_str(&format!(
                "  curl -s '{base}?limit=3'                 # no key: 401\n"
            ));
            out.push_str(&format!(
                "  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} '{curl_auth} '{base}?limit=1'; done   # past the burst: 429\n"
            ));
        }
    }
    if let Some((address, namespace)) = mcp_example {
        let header = key
            .map(|key| format!(" --header 'Authorization: Bearer {key}'"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  npx @modelcontextprotocol/inspector --cli http://{address}/mcp/{namespace} --transport http{header} --method tools/list\n"
        ));
    }
    out.push_str("\nCtrl-C stops both.\n");
    out
}
