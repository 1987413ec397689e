//! What the container image runs, run here (no base image can be pulled on this machine): the
//! binary with the deployment's own config (`deploy/config/capgate.yaml`, its paths moved under
//! a temporary root), as uid 65532 when the test runs as root, with every mounted folder
//! read-only and only the plugin cache writable.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Running, free_port};

const KEY: &str = "cg_000000000000000000000000000000000000000000000d0c";
const ADMIN_TOKEN: &str = "admin-token-for-the-image-test";
const UID: u32 = 65532;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Makes `path` and everything under it read-only for everyone (directories stay traversable).
fn read_only(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            read_only(&entry.unwrap().path());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_non_root_on_read_only_volumes() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.path().join("etc/capgate");
    let cache = root.path().join("var/cache/capgate");
    for dir in ["config", "specs", "plugins", "consumers"] {
        std::fs::create_dir_all(etc.join(dir)).unwrap();
    }
    std::fs::create_dir_all(&cache).unwrap();
    let sim = stripe_sim::StripeSim::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (rest, mcp, admin) = (free_port(), free_port(), free_port());
    // The deployment's config, with its paths under the temporary root and its Redis left out
    // (the shared-limits test has a real one).
    let config = std::fs::read_to_string(repo("deploy/config/capgate.yaml"))
        .unwrap()
        .replace("/etc/capgate", &etc.display().to_string())
        .replace("/var/cache/capgate", &cache.display().to_string())
        .replace("redis://redis:6379/0", "local")
        .replace("0.0.0.0:9901", &format!("127.0.0.1:{admin}"));
    assert!(
        config.contains("store: local"),
        "the deploy config changed shape"
    );
    let config = format!(
        "{config}listen:\n  ports: {{8080: {rest}, 9090: {mcp}}}\nupstreams:\n  - {{namespace: \"*\", base_uri: \"{}\"}}\n",
        sim.base_url()
    );
    std::fs::write(etc.join("config/capgate.yaml"), config).unwrap();
    std::fs::copy(
        repo("deploy/specs/identity-sessions.yaml"),
        etc.join("specs/identity-sessions.yaml"),
    )
    .unwrap();
    let noop = repo("plugins/target/wasm32-wasip2/release/noop.wasm");
    if noop.exists() {
        std::fs::copy(&noop, etc.join("plugins/noop.wasm")).unwrap();
    }
    let digest = capgate_model::consumers::hex(&capgate_model::consumers::digest(KEY));
    std::fs::write(
        etc.join("consumers/consumers.yaml"),
        format!("consumers:\n  - name: ops\n    keys:\n      - sha256: {digest}\n        prefix: cg_0000\n    scopes:\n      - access: read\n"),
    )
    .unwrap();
    read_only(&etc);
    let as_root = is_root();
    if as_root {
        std::os::unix::fs::chown(&cache, Some(UID), Some(UID)).unwrap();
    }
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    let binary = env!("CARGO_BIN_EXE_capgate");
    let mut command = if as_root {
        let mut command = Command::new("setpriv");
        command.args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            binary,
        ]);
        command
    } else {
        Command::new(binary)
    };
    // The image's command, on loopback.
    command
        .args(["serve", "--config"])
        .arg(etc.join("config/capgate.yaml"))
        .args(["--address", "127.0.0.1"])
        .env_clear()
        .env("STRIPE_API_KEY", stripe_sim::DEMO_KEY)
        .env("CAPGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = Running(command.spawn().unwrap());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if as_root {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(uid.contains(&format!("\t{UID}\t")), "{uid}");
    }
    let list = format!("http://127.0.0.1:{rest}/v1/v1/identity/verification-sessions?limit=1");
    let answer = http.get(&list).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(http.get(&list).send().await.unwrap().status(), 401);
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    assert_eq!(http.get(&metrics).send().await.unwrap().status(), 401);
    let metrics = http
        .get(&metrics)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("capgate_consumer_calls_total")
    );
    drop(child);
    writable(&etc);
}

/// Undoes [`read_only`], so that the temporary root can be removed.
fn writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            writable(&entry.path());
        }
    }
}
