//! The `flowgate` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::authz::{PolicyEngine, PolicyError, generated_schema};
use flowgate::exchange_client::{ExchangeClient, write_secret_file};
use flowgate::sidecar::{SidecarConfig, run_sidecar};
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
    /// Get flowgate credentials from a gateway's token endpoint.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the keys flowgate signs credentials with.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run a local credential-free endpoint for a worker that forwards to the gateway with a
    /// short-lived credential it keeps fresh.
    Sidecar {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Exchange a CI or workload token for a flowgate credential (RFC 8693 token exchange).
    Exchange(ExchangeArgs),
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["subject_token_env", "subject_token_file"]))]
struct ExchangeArgs {
    /// The gateway's address; its token endpoint is found by OIDC discovery.
    #[arg(long)]
    gateway: String,
    /// The environment variable holding the subject token (e.g. a CI job's OIDC token).
    #[arg(long, value_name = "VAR")]
    subject_token_env: Option<String>,
    /// A file holding the subject token.
    #[arg(long, value_name = "FILE")]
    subject_token_file: Option<PathBuf>,
    /// The scope to request, e.g. "namespace:payments role:worker task_queue:deploys".
    #[arg(long)]
    scope: String,
    /// CA bundle (PEM) for an https:// gateway; the web PKI roots otherwise.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Write to this file (atomically, mode 0600) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The whole token response as JSON, not just the token.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new P-256 signing key to DIR (`mint.key_dir`). A running gateway publishes it at
    /// its next key reload and signs with it once it has been published for
    /// `mint.key_publish_ahead`; the previous key stays published until its tokens expire.
    Generate { dir: PathBuf },
    /// List the keys of DIR with their kids.
    List { dir: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Strictly validate every policy in DIR against DIR/schema.cedarschema.
    Validate {
        dir: PathBuf,
        /// Fail (exit 1) when there are warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print the Cedar schema of flowgate's requests (write it to DIR/schema.cedarschema).
    Schema,
    /// Format every policy file in DIR with Cedar's formatter; print the files it rewrote.
    Fmt {
        /// Write nothing: print a diff of each file that is not formatted and exit 1 if any is.
        #[arg(long)]
        check: bool,
        dir: PathBuf,
    },
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

fn list_keys(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
        .collect();
    paths.sort();
    for path in paths {
        let key = flowgate::mint::keys::SigningKey::read(&path)?;
        println!("{}\t{}\t{}", key.kid, humantime::format_rfc3339_seconds(key.created), path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Policy { command: PolicyCommand::Validate { dir, deny_warnings } } => match PolicyEngine::load(&dir) {
            Ok(engine) => {
                print_policy_report(&engine);
                if deny_warnings && !engine.warnings.is_empty() {
                    Err(anyhow::anyhow!("warnings are denied (--deny-warnings)"))
                } else {
                    Ok(())
                }
            }
            Err(error) => Err(error.into()),
        },
        Command::Policy { command: PolicyCommand::Fmt { check, dir } } => {
            flowgate::policy_fmt::run(&dir, check).map_err(Into::into)
        }
        Command::Policy { command: PolicyCommand::Schema } => {
            print!("{}", generated_schema());
            Ok(())
        }
        Command::Token { command: TokenCommand::Exchange(args) } => token_exchange(args),
        Command::Sidecar { config } => sidecar(config),
        Command::Keys { command: KeysCommand::Generate { dir } } => {
            flowgate::mint::keys::generate(&dir, std::time::SystemTime::now())
                .map(|(path, kid)| {
                    println!("{kid}\t{}", path.display());
                })
                .map_err(Into::into)
        }
        Command::Keys { command: KeysCommand::List { dir } } => list_keys(&dir),
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

fn token_exchange(args: ExchangeArgs) -> anyhow::Result<()> {
    let subject_token = match (&args.subject_token_env, &args.subject_token_file) {
        (Some(name), _) => std::env::var(name)
            .ok()
            .filter(|token| !token.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("environment variable `{name}` is not set or empty"))?,
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?
        }
        (None, None) => unreachable!("clap requires one subject token option"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let credential = runtime.block_on(async {
        let client = ExchangeClient::new(args.ca.as_deref())?;
        let discovery = client.discover(&args.gateway).await?;
        anyhow::Ok(client.exchange(&discovery.token_endpoint, subject_token.trim(), &args.scope).await?)
    })?;
    let output = match args.json {
        true => format!("{:#}\n", credential.to_response_json()),
        false => credential.token.clone(),
    };
    match &args.output {
        Some(path) => write_secret_file(path, output.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", path.display()))?,
        None => println!("{}", output.trim_end()),
    }
    Ok(())
}

fn sidecar(path: PathBuf) -> anyhow::Result<()> {
    init_tracing();
    let config = SidecarConfig::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen.address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", config.listen.address))?;
        run_sidecar(listener, config, shutdown_signal()).await
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
