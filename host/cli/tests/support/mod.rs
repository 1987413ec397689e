//! What the process-level tests share: free ports, children killed on drop, a real
//! `redis-server` started on a free port.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port no listener holds now, and never handed out before in this process: the OS may give a
/// port it just released to the next `bind(0)`, and two servers told the same port would fight
/// over it (one replica's REST port once came back as another's MCP port).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A child process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-server` (Debian's package; `.ci/run` installs it) on `port`, with no persistence.
pub fn redis(port: u16) -> Running {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
    wait_for_port(port, "redis-server");
    Running(child)
}

/// Sends `signal` (`-STOP`, `-TERM`...) to a child.
pub fn signal(child: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
