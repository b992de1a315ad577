//! The `flowgate` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::authz::{PolicyEngine, PolicyError, generated_schema};
use flowgate::{Config, Listeners};

#[derive(Parser)]
#[command(name = "flowgate", version, about = "Identity-aware access gateway for Temporal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and everything it points to (policies, issuers, TLS material).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with policy directories.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Strictly validate every policy in DIR against DIR/schema.cedarschema.
    Validate { dir: PathBuf },
    /// Print the Cedar schema of flowgate's requests (write it to DIR/schema.cedarschema).
    Schema,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout may be the decision log (`audit.path = "-"`).
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn print_policy_report(engine: &PolicyEngine) {
    for warning in &engine.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "policies ok: {} policies in {} files, version {}",
        engine.policy_count(),
        engine.files.len(),
        engine.version()
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Policy { command: PolicyCommand::Validate { dir } } => match PolicyEngine::load(&dir) {
            Ok(engine) => {
                print_policy_report(&engine);
                Ok(())
            }
            Err(error) => Err(error.into()),
        },
        Command::Policy { command: PolicyCommand::Schema } => {
            print!("{}", generated_schema());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<PolicyError>() {
                Some(PolicyError::Invalid(problems)) => {
                    for problem in problems {
                        eprintln!("error: {problem}");
                    }
                    eprintln!("error: policy set is invalid ({} problems)", problems.len());
                }
                _ => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let prepared = flowgate::server::prepare(&config)?;
    drop(prepared);
    let engine = PolicyEngine::load(&config.policy.dir)?;
    println!("config ok: {}", path.display());
    print_policy_report(&engine);
    Ok(())
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    init_tracing();
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        flowgate::run(listeners, config, shutdown_signal()).await
    })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
