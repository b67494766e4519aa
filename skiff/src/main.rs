//! `skiff`: one binary for every Skiff component (DESIGN.md §2 is the command-line contract).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "skiff", version, about = "A Kubernetes-compatible orchestrator whose service networking runs in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreArg {
    Embedded,
    Etcd,
}

#[derive(Subcommand)]
enum Command {
    /// API server (and, as they land, scheduler and controllers). Writes D/kubeconfig.
    Control {
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value = "embedded")]
        store: StoreArg,
        /// Comma-separated etcd client URLs (with --store etcd).
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
        etcd_endpoints: Vec<String>,
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: String,
    },
    /// Prints the admin kubeconfig of a data directory.
    Kubeconfig {
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
    },
    /// Node agent (not implemented yet).
    Agent {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Cluster DNS server (not implemented yet).
    Dns {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SKIFF_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Control { data_dir, listen, store, etcd_endpoints, service_cidr } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let mut cfg = skiff_control::ControlConfig::new(data_dir);
                cfg.listen = listen;
                cfg.store = match store {
                    StoreArg::Embedded => skiff_control::StoreKind::Embedded,
                    StoreArg::Etcd => skiff_control::StoreKind::Etcd,
                };
                cfg.etcd_endpoints = etcd_endpoints;
                cfg.service_cidr = service_cidr;
                let control = skiff_control::start(cfg).await?;
                println!("skiff control: API server at https://{}", control.addr);
                println!("export KUBECONFIG={}", control.kubeconfig.display());
                tokio::select! {
                    r = control.wait() => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
        Command::Kubeconfig { data_dir } => {
            let path = data_dir.join("kubeconfig");
            let text = std::fs::read_to_string(&path).with_context(|| format!("no kubeconfig at {} (has `skiff control --data-dir {}` run?)", path.display(), data_dir.display()))?;
            print!("{text}");
            Ok(())
        }
        Command::Agent { .. } => skiff_agent::run(),
        Command::Dns { .. } => skiff_dns::run(),
    }
}
