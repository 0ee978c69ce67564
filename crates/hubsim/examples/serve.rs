//! Serves a folder of repos as a Hub, for scripts that should not depend on the `modeltree` CLI
//! (`scripts/hf-fidelity.sh`).
//!
//! ```text
//! cargo run -p modeltree-hubsim --example serve -- ROOT ADDR [--page-size N] [--gated ID]... [--private ID]...
//!     [--token T]... [--no-limits]
//! ```
//!
//! Prints one line `hubsim http://HUB_ADDR cdn=http://CDN_ADDR repos=N` once it is listening (ADDR may use port 0),
//! then serves until killed.

use std::net::SocketAddr;
use std::process::ExitCode;

use hubsim::{QuotaConfig, ServerConfig};

fn usage() -> ExitCode {
    eprintln!("usage: serve ROOT ADDR [--page-size N] [--gated ID]... [--private ID]... [--token T]... [--no-limits]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(root), Some(addr)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return usage();
    };
    let mut config = ServerConfig::new(root);
    config.addr = addr;
    config.cdn_addr = SocketAddr::new(addr.ip(), 0);
    let mut rest = args.iter().skip(2);
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.clone().next()) {
            ("--no-limits", _) => config.quotas = QuotaConfig::unlimited(),
            ("--page-size", Some(n)) => match n.parse() {
                Ok(n) => {
                    config.page_size = n;
                    rest.next();
                }
                Err(_) => return usage(),
            },
            ("--gated", Some(id)) => {
                config.gated.push(id.clone());
                rest.next();
            }
            ("--private", Some(id)) => {
                config.private.push(id.clone());
                rest.next();
            }
            ("--token", Some(t)) => {
                config.tokens.push(t.clone());
                rest.next();
            }
            _ => return usage(),
        }
    }
    let server = match hubsim::Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hubsim: {e}");
            return ExitCode::FAILURE;
        }
    };
    for skipped in &server.scan_report().skipped {
        eprintln!("hubsim: skipped {skipped}");
    }
    println!(
        "hubsim http://{} cdn=http://{} repos={}",
        server.local_addr(),
        server.cdn_addr(),
        server.scan_report().repos
    );
    let stop = std::future::pending::<()>();
    match server.run(stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hubsim: {e}");
            ExitCode::FAILURE
        }
    }
}
