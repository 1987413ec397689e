//! `stripe-sim [--listen ADDR]`: the Stripe stand-in on its own (`capgate stripe-sim` runs the
//! same server). The address defaults to `127.0.0.1:12111`, or `CAPGATE_SIM_LISTEN`.

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage: stripe-sim [--listen ADDR]";

fn listen_address() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut text = std::env::var("CAPGATE_SIM_LISTEN").unwrap_or_else(|_| "127.0.0.1:12111".into());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => text = args.next().ok_or(USAGE)?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument \"{other}\"\n{USAGE}")),
        }
    }
    text.parse()
        .map_err(|_| format!("invalid listen address \"{text}\": expected IP:PORT"))
}

fn main() -> ExitCode {
    let addr = match listen_address() {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(stripe_sim::run(addr, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
