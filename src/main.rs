//! The `flowgate` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::authz::{PolicyEngine, PolicyError, generated_schema};
use std::collections::BTreeMap;

use flowgate::exchange_client::{ExchangeClient, write_secret_file};
use flowgate::explain::{CallSpec, IssuerProfile, Issuers};
use flowgate::sidecar::{SidecarConfig, run_sidecar};
use flowgate::{Config, Listeners};

#[derive(Parser)]
#[command(name = "flowgate", version = flowgate::VERSION, about = "Identity-aware access gateway for Temporal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, env = "FLOWGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and everything it points to (policies, issuers, TLS material).
    Check {
        #[arg(long, short, env = "FLOWGATE_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Work with policy directories.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Get flowgate credentials from a gateway's token endpoint, or print your login's token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Log in to a gateway as a person: the device flow or the browser (PKCE), with the
    /// identity provider the gateway names. The token is kept for `token print` and, with
    /// --temporal-env, for the Temporal CLI.
    Login(Box<LoginArgs>),
    /// Revoke your login to a gateway at the identity provider and delete it.
    Logout(GatewayArgs),
    /// Manage the keys flowgate signs credentials with.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Show how a call is decided: the principal as flowgate sees it, the resource, the
    /// context, the decision, the policies that determined it and any errors.
    Explain(Box<ExplainArgs>),
    /// Run a local credential-free endpoint for a worker that forwards to the gateway with a
    /// short-lived credential it keeps fresh.
    Sidecar {
        #[arg(long, short, env = "FLOWGATE_SIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Print a shell completion script: `source <(flowgate completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from this command line's definition:
    /// `flowgate man > flowgate.1`.
    Man,
    /// Work with decision logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of decision logs: FILEs in order, oldest first (rotated and
    /// gzipped ones too). Reports the first line that was changed, removed or reordered, and
    /// exits non-zero if any was.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The decisions in FILEs (in order; rotated and gzipped ones too) that match every filter
    /// given, each with what Temporal answered. Times are RFC 3339, a day (`2026-12-05`, from
    /// midnight UTC) or a duration ago (`24h`, `7d`).
    Query(Box<QueryArgs>),
    /// Decide the calls recorded in FILEs again under the policies of DIR, and report those
    /// whose decision would change (the same filters as `query` narrow them down). Exits
    /// non-zero if any would, with `--fail-on-change`.
    Replay {
        /// The proposed policy set.
        #[arg(long, value_name = "DIR")]
        policies: PathBuf,
        #[arg(long)]
        fail_on_change: bool,
        #[command(flatten)]
        query: Box<QueryArgs>,
    },
}

#[derive(clap::Args)]
struct QueryArgs {
    /// A principal id (`okta:00u-alice`) or the identity flowgate stamps for it
    /// (`github:acme/payments@prod`); `*` matches anything.
    #[arg(long)]
    principal: Option<String>,
    /// Calls on this workflow id, or implying something about it.
    #[arg(long)]
    workflow_id: Option<String>,
    /// The call that made this run (a start, a signal-with-start, a reset).
    #[arg(long)]
    run_id: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// The action (the RPC's name, e.g. `StartWorkflowExecution`).
    #[arg(long)]
    action: Option<String>,
    #[arg(long, value_parser = ["allow", "deny"])]
    decision: Option<String>,
    /// From this time on.
    #[arg(long)]
    since: Option<String>,
    /// Before this time.
    #[arg(long)]
    until: Option<String>,
    /// `text`: a line per decision; `json`: the records, each with its `outcome`, one per line.
    #[arg(long, short, visible_alias = "format", default_value = "text", value_parser = ["text", "json"])]
    output: String,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Exchange a CI or workload token for a flowgate credential (RFC 8693 token exchange).
    Exchange(ExchangeArgs),
    /// Print the access token of your login to a gateway (`flowgate login`), refreshed first
    /// when less than a minute of it is left.
    Print(TokenPrintArgs),
}

/// `-o/--output text|json`, as every command that prints data takes it (the Temporal CLI's
/// flag). `--json` is the older spelling of `-o json`.
#[derive(clap::Args, Clone, Copy)]
struct OutputArgs {
    /// `text` for people, `json` for programs.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[arg(long, hide = true)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

impl OutputArgs {
    fn json(self) -> bool {
        self.json || self.output == Output::Json
    }
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// The gateway: host:port (https, or http on loopback), http://host:port or https://host:port.
    #[arg(long, env = "FLOWGATE_ADDRESS", value_name = "ADDRESS")]
    address: String,
    /// CA bundle (PEM) trusted for the gateway and the identity provider, besides the system roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TokenPrintArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// `json`: the token with its issuer and expiry.
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args)]
struct LoginArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The issuer to log in to, when the gateway offers several (its `[[issuers]]` name).
    #[arg(long, value_name = "NAME")]
    issuer: Option<String>,
    /// `device`: a URL and a code to enter on any device (SSH, terminals); `browser`: a
    /// browser on this machine (PKCE, loopback redirect). Default: `browser` when there is a
    /// display, else `device`.
    #[arg(long, value_parser = ["device", "browser"])]
    flow: Option<String>,
    /// With the browser flow: print the URL, do not open a browser.
    #[arg(long)]
    no_browser: bool,
    /// Log in again even if the stored login can be refreshed.
    #[arg(long)]
    force: bool,
    /// Also write a Temporal CLI environment NAME (address, tls, api-key), so that
    /// `temporal ... --env NAME` goes through the gateway as you.
    #[arg(long, value_name = "NAME")]
    temporal_env: Option<String>,
    /// The Temporal CLI's env file (default: temporalio/temporal.yaml in your config directory).
    #[arg(long, value_name = "FILE", requires = "temporal_env")]
    temporal_env_file: Option<PathBuf>,
    /// With --temporal-env: its default namespace.
    #[arg(long, requires = "temporal_env")]
    namespace: Option<String>,
    /// How long you have to approve the login.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["subject_token_env", "subject_token_file"]))]
struct ExchangeArgs {
    /// The gateway's address; its token endpoint is found by OIDC discovery.
    #[arg(long, visible_alias = "address", env = "FLOWGATE_ADDRESS")]
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
    #[arg(long, value_name = "FILE")]
    output_file: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("who").args(["issuer", "token_env", "token_file"]))]
struct ExplainArgs {
    /// Decide with the policies of DIR (default: `policy.dir` of --config).
    #[arg(long, value_name = "DIR", conflicts_with = "admin")]
    policies: Option<PathBuf>,
    /// Also decide with this shadow policy set (default: `policy.shadow_dir` of --config).
    #[arg(long, value_name = "DIR", conflicts_with = "admin")]
    shadow: Option<PathBuf>,
    /// A gateway config: its issuers (names, presets, URLs) and policy directories.
    #[arg(long, short, conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// Ask a running gateway's admin endpoint instead (e.g. http://127.0.0.1:9233).
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// With --admin: explain this recent denial (the id a denial message names).
    #[arg(long, value_name = "ID", requires = "admin", conflicts_with_all = ["who", "method"])]
    decision: Option<String>,
    /// The issuer name of the principal (as in `[[issuers]]`), with --claims.
    #[arg(long, value_name = "NAME", requires = "claims")]
    issuer: Option<String>,
    /// Without --config: the issuer's preset (default: the issuer name, if it names a preset).
    #[arg(long, value_name = "PRESET", requires = "issuer")]
    preset: Option<String>,
    /// The token's claims: JSON, or @FILE.
    #[arg(long, value_name = "JSON|@FILE", requires = "issuer")]
    claims: Option<String>,
    /// A token in this environment variable (locally its signature is not checked).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// A token in this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The method: an action name (`StartWorkflowExecution`, `IssueCredential`) or a gRPC path.
    #[arg(long, required_unless_present = "decision")]
    method: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    #[arg(long)]
    workflow_id: Option<String>,
    #[arg(long)]
    workflow_type: Option<String>,
    #[arg(long)]
    task_queue: Option<String>,
    #[arg(long)]
    schedule_id: Option<String>,
    #[arg(long)]
    signal_name: Option<String>,
    #[arg(long)]
    query_type: Option<String>,
    #[arg(long)]
    update_name: Option<String>,
    /// For IssueCredential: the scope asked for.
    #[arg(long)]
    scope: Option<String>,
    /// For the ScheduleActivityTask command.
    #[arg(long)]
    activity_type: Option<String>,
    /// For the ScheduleNexusOperation command.
    #[arg(long)]
    endpoint: Option<String>,
    /// For starts: TERMINATE_IF_RUNNING, REJECT_DUPLICATE, ...
    #[arg(long)]
    workflow_id_reuse_policy: Option<String>,
    /// For starts: USE_EXISTING, TERMINATE_EXISTING, FAIL.
    #[arg(long)]
    workflow_id_conflict_policy: Option<String>,
    /// For StartWorkflowExecution: an eager start.
    #[arg(long)]
    request_eager_execution: bool,
    /// For starts: on_conflict_options or completion callbacks are set.
    #[arg(long)]
    attaches: bool,
    /// For RespondWorkflowTaskCompleted: a command, as JSON, e.g.
    /// `{"method": "StartChildWorkflowExecution", "workflow_type": "Cleanup", "task_queue": "deploys"}`
    /// (repeat for each command, in order).
    #[arg(long, value_name = "JSON")]
    command: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new P-256 signing key to DIR (`mint.key_dir`). A running gateway publishes it at
    /// its next key reload and signs with it once it has been published for
    /// `mint.key_publish_ahead`; the previous key stays published until its tokens expire.
    Generate {
        dir: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the keys of DIR with their kids.
    List {
        dir: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Strictly validate every policy in DIR against DIR/schema.cedarschema.
    Validate {
        dir: PathBuf,
        /// Fail (exit 1) when there are warnings too.
        #[arg(long)]
        deny_warnings: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the Cedar schema of flowgate's requests (write it to DIR/schema.cedarschema).
    Schema,
    /// Run the test cases in DIR/tests/*.yaml against the policies of DIR.
    #[command(visible_alias = "run-tests")]
    Test {
        dir: PathBuf,
        /// Take issuers from this gateway config (in addition to the test files' `issuers:`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Run only the cases whose name contains TEXT.
        #[arg(long, value_name = "TEXT")]
        filter: Option<String>,
        /// Fail (exit 1) when a policy determines no case.
        #[arg(long)]
        require_coverage: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Format every policy file in DIR with Cedar's formatter; print the files it rewrote.
    #[command(visible_alias = "format")]
    Fmt {
        /// Write nothing: print a diff of each file that is not formatted and exit 1 if any is.
        #[arg(long)]
        check: bool,
        dir: PathBuf,
    },
}

/// Logs go to stderr: stdout may be the decision log (`audit.path = "-"`).
///
/// `FLOWGATE_LOG` filters them (`info` by default; `debug`, or `info,flowgate::access=debug` for
/// one line per call). `FLOWGATE_LOG_FORMAT` chooses their form: `text` (the default) for
/// people, with colour codes only when stderr is a terminal, so that a log file or a pipeline
/// gets plain text; `json` for log pipelines, one object per line with the event's fields at the
/// top level (`decision_id`, `trace_id` on a call's lines).
fn init_tracing() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("FLOWGATE_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
        Ok("text") | Ok("") | Err(std::env::VarError::NotPresent) => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        Ok(other) => anyhow::bail!("`FLOWGATE_LOG_FORMAT` is `{other}`; use `text` or `json`"),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("`FLOWGATE_LOG_FORMAT` is not text; use `text` or `json`")
        }
    }
    Ok(())
}

/// A valid policy set's summary; with `-o json`, one object (and `config`, for `check`).
fn print_policy_report(engine: &PolicyEngine, output: OutputArgs, config: Option<&std::path::Path>) {
    if output.json() {
        let mut report = serde_json::json!({
            "ok": true,
            "policies": engine.policy_count(),
            "files": engine.files.len(),
            "version": engine.version(),
            "warnings": engine.warnings.iter().map(problem_json).collect::<Vec<_>>(),
        });
        if let Some(config) = config {
            report["config"] = serde_json::json!(config);
        }
        println!("{report:#}");
        return;
    }
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

fn problem_json(problem: &flowgate::authz::PolicyProblem) -> serde_json::Value {
    serde_json::json!({"file": problem.file, "line": problem.line, "column": problem.column, "message": problem.message})
}

fn list_keys(dir: &std::path::Path, output: OutputArgs) -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
        .collect();
    paths.sort();
    let mut keys = Vec::new();
    for path in paths {
        let key = flowgate::credential::keys::SigningKey::read(&path)?;
        let created = humantime::format_rfc3339_seconds(key.created).to_string();
        match output.json() {
            true => keys.push(serde_json::json!({"kid": key.kid, "created": created, "path": path})),
            false => println!("{}\t{created}\t{}", key.kid, path.display()),
        }
    }
    if output.json() {
        println!("{:#}", serde_json::Value::Array(keys));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config, output } => check(config, output),
        Command::Policy { command: PolicyCommand::Validate { dir, deny_warnings, output } } => {
            match PolicyEngine::load(&dir) {
                Ok(engine) => {
                    print_policy_report(&engine, output, None);
                    if deny_warnings && !engine.warnings.is_empty() {
                        Err(anyhow::anyhow!("warnings are denied (--deny-warnings)"))
                    } else {
                        Ok(())
                    }
                }
                Err(PolicyError::Invalid(problems)) if output.json() => {
                    let errors: Vec<_> = problems.iter().map(problem_json).collect();
                    println!("{:#}", serde_json::json!({"ok": false, "errors": errors}));
                    Err(anyhow::anyhow!("policy set is invalid ({} problems)", problems.len()))
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Policy { command: PolicyCommand::Fmt { check, dir } } => {
            flowgate::policy_fmt::run(&dir, check).map_err(Into::into)
        }
        Command::Policy { command: PolicyCommand::Test { dir, config, filter, require_coverage, output } } => {
            policy_test(&dir, config.as_deref(), filter.as_deref(), require_coverage, output)
        }
        Command::Explain(args) => explain(*args),
        Command::Policy { command: PolicyCommand::Schema } => {
            print!("{}", generated_schema());
            Ok(())
        }
        Command::Token { command: TokenCommand::Exchange(args) } => token_exchange(args),
        Command::Token { command: TokenCommand::Print(args) } => token_print(args),
        Command::Login(args) => login_command(*args),
        Command::Logout(args) => logout(args),
        Command::Sidecar { config } => sidecar(config),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "flowgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Keys { command: KeysCommand::Generate { dir, output } } => {
            flowgate::credential::keys::generate(&dir, std::time::SystemTime::now())
                .map(|(path, kid)| match output.json() {
                    true => println!("{:#}", serde_json::json!({"kid": kid, "path": path})),
                    false => println!("{kid}\t{}", path.display()),
                })
                .map_err(Into::into)
        }
        Command::Keys { command: KeysCommand::List { dir, output } } => list_keys(&dir, output),
        Command::Audit { command: AuditCommand::Verify { files, output } } => audit_verify(&files, output),
        Command::Audit { command: AuditCommand::Query(args) } => audit_query(*args),
        Command::Audit { command: AuditCommand::Replay { policies, fail_on_change, query } } => {
            audit_replay(&policies, fail_on_change, *query)
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
                _ => eprintln!("error: {}", flowgate::error::error_chain(error.as_ref())),
            }
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(files: &[PathBuf], output: OutputArgs) -> anyhow::Result<()> {
    let verified = flowgate::audit::chain::verify(files)?;
    if output.json() {
        let breaks: Vec<_> = verified
            .breaks
            .iter()
            .map(|b| serde_json::json!({"file": b.file, "line": b.line, "problem": b.problem}))
            .collect();
        println!(
            "{:#}",
            serde_json::json!({
                "intact": verified.intact(),
                "lines": verified.lines,
                "files": files,
                "start": verified.start_text(),
                "head": flowgate::audit::log::hex(&verified.head),
                "breaks": breaks,
            })
        );
    } else {
        for broken in &verified.breaks {
            println!("{broken}");
        }
    }
    if verified.intact() && output.json() {
        Ok(())
    } else if verified.intact() {
        println!(
            "ok: {} lines in {} files, chain intact from {} to head {}",
            verified.lines,
            files.len(),
            verified.start_text(),
            flowgate::audit::log::hex(&verified.head)
        );
        Ok(())
    } else {
        let first = &verified.breaks[0];
        anyhow::bail!(
            "the chain is broken in {} places, first at {}:{}",
            verified.breaks.len(),
            first.file.display(),
            first.line
        )
    }
}

fn query_filter(args: &QueryArgs) -> anyhow::Result<flowgate::audit::query::Filter> {
    use flowgate::audit::query::{Filter, parse_time};
    let now = std::time::SystemTime::now();
    let time =
        |text: &Option<String>| text.as_ref().map(|t| parse_time(t, now)).transpose().map_err(anyhow::Error::msg);
    Ok(Filter {
        principal: args.principal.clone(),
        workflow_id: args.workflow_id.clone(),
        run_id: args.run_id.clone(),
        namespace: args.namespace.clone(),
        action: args.action.clone(),
        decision: args.decision.clone(),
        since: time(&args.since)?,
        until: time(&args.until)?,
    })
}

fn audit_replay(policies: &std::path::Path, fail_on_change: bool, args: QueryArgs) -> anyhow::Result<()> {
    let engine = PolicyEngine::load(policies)?;
    let replayed = flowgate::audit::replay::replay(&args.files, &query_filter(&args)?, &engine)?;
    if args.output == "json" {
        for changed in &replayed.changed {
            let mut record = changed.record.clone();
            record["replayed"] = serde_json::json!({
                "decision": changed.now, "reasons": changed.reasons, "unasked_questions": changed.unasked,
            });
            println!("{record}");
        }
    } else {
        for changed in &replayed.changed {
            let partial = match changed.unasked {
                0 => String::new(),
                n => format!(" (the RPC alone: the {n} questions its request implied were not asked)"),
            };
            println!(
                "{}  => now {} [{}]{partial}",
                flowgate::audit::query::text_line(&changed.record),
                changed.now,
                changed.reasons.join(", ")
            );
        }
        for ((principal, action, change), count) in replayed.summary() {
            println!("{count} calls of {principal}: {action} {change}");
        }
        let skipped: usize = replayed.skipped.values().sum();
        println!(
            "{} calls replayed under {} ({}): {} would change; {skipped} not replayable",
            replayed.replayed,
            policies.display(),
            engine.version(),
            replayed.changed.len()
        );
        for (why, count) in &replayed.skipped {
            println!("  {count} not replayable: {why}");
        }
    }
    if fail_on_change && !replayed.changed.is_empty() {
        anyhow::bail!("{} decisions would change", replayed.changed.len());
    }
    Ok(())
}

fn audit_query(args: QueryArgs) -> anyhow::Result<()> {
    use flowgate::audit::query::{query, text_line};
    let filter = query_filter(&args)?;
    for record in query(&args.files, &filter)? {
        if args.output == "json" {
            println!("{record}");
        } else {
            println!("{}", text_line(&record));
        }
    }
    Ok(())
}

fn policy_test(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    filter: Option<&str>,
    require_coverage: bool,
    output: OutputArgs,
) -> anyhow::Result<()> {
    let issuers = match config {
        Some(path) => Some(Issuers::from_config(&Config::load(path)?)?),
        None => None,
    };
    let report = flowgate::policy_test::run(dir, issuers.as_ref(), filter)?;
    match output.json() {
        true => println!("{:#}", report.to_json()),
        false => print!("{}", report.to_text()),
    }
    if report.results.is_empty() {
        anyhow::bail!("no test case ran{}", filter.map(|f| format!(" (filter `{f}`)")).unwrap_or_default());
    }
    if report.failed() > 0 {
        anyhow::bail!("{} of {} cases failed", report.failed(), report.results.len());
    }
    if require_coverage && !report.uncovered.is_empty() {
        anyhow::bail!("{} policies determine no case (--require-coverage)", report.uncovered.len());
    }
    Ok(())
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    if let Some(admin) = &args.admin {
        return explain_remote(admin, &args);
    }
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let policy_dir = args
        .policies
        .clone()
        .or_else(|| config.as_ref().map(|c| c.policy.dir.clone()))
        .ok_or_else(|| anyhow::anyhow!("give --policies DIR, --config FILE or --admin URL"))?;
    let shadow_dir = args.shadow.clone().or_else(|| config.as_ref().and_then(|c| c.policy.shadow_dir.clone()));
    let enforced = PolicyEngine::load(&policy_dir)?;
    let shadow = shadow_dir.as_deref().map(PolicyEngine::load).transpose()?;
    let mut issuers = match &config {
        Some(config) => Issuers::from_config(config)?,
        None => Issuers::default(),
    };
    let call = call_spec(&args)?;
    let principal = match (&args.issuer, token_of(&args)?) {
        (Some(name), _) => {
            let claims = claims_of(args.claims.as_deref().unwrap_or("{}"))?;
            if config.is_none() || args.preset.is_some() {
                let profile = IssuerProfile {
                    preset: args.preset.clone().or_else(|| {
                        flowgate::authn::presets::PRESET_NAMES.contains(&name.as_str()).then(|| name.clone())
                    }),
                    minted: name == flowgate::explain::DEFAULT_MINT_NAME,
                    ..Default::default()
                };
                issuers = issuers.merge(Issuers::from_profiles(&BTreeMap::from([(name.clone(), profile)]))?);
            }
            issuers.principal(name, &claims)?
        }
        (None, Some(token)) => {
            eprintln!("note: the token's signature is not checked locally (use --admin to have a gateway verify it)");
            issuers.principal_of_unverified_token(&token)?
        }
        (None, None) => {
            anyhow::bail!("give the principal: --issuer NAME --claims JSON, --token-env VAR or --token-file FILE")
        }
    };
    let explanation = flowgate::explain::explain(&enforced, shadow.as_ref(), &principal, &call.resolve()?);
    if args.output.json() {
        println!("{:#}", serde_json::to_value(&explanation)?);
    } else {
        print!("{}", explanation.to_text());
    }
    Ok(())
}

fn call_spec(args: &ExplainArgs) -> anyhow::Result<CallSpec> {
    Ok(CallSpec {
        method: args.method.clone().ok_or_else(|| anyhow::anyhow!("give --method"))?,
        namespace: args.namespace.clone(),
        workflow_id: args.workflow_id.clone(),
        workflow_type: args.workflow_type.clone(),
        task_queue: args.task_queue.clone(),
        schedule_id: args.schedule_id.clone(),
        signal_name: args.signal_name.clone(),
        query_type: args.query_type.clone(),
        update_name: args.update_name.clone(),
        scope: args.scope.clone(),
        activity_type: args.activity_type.clone(),
        endpoint: args.endpoint.clone(),
        workflow_id_reuse_policy: args.workflow_id_reuse_policy.clone(),
        workflow_id_conflict_policy: args.workflow_id_conflict_policy.clone(),
        request_eager_execution: args.request_eager_execution,
        attaches: args.attaches,
        commands: args
            .command
            .iter()
            .enumerate()
            .map(|(index, json)| serde_json::from_str(json).map_err(|e| anyhow::anyhow!("--command {index}: {e}")))
            .collect::<anyhow::Result<_>>()?,
        ..CallSpec::default()
    })
}

fn token_of(args: &ExplainArgs) -> anyhow::Result<Option<String>> {
    Ok(match (&args.token_env, &args.token_file) {
        (Some(name), _) => Some(
            std::env::var(name)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| anyhow::anyhow!("environment variable `{name}` is not set or empty"))?,
        ),
        (None, Some(path)) => {
            Some(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?)
        }
        (None, None) => None,
    }
    .map(|token| token.trim().to_owned()))
}

fn claims_of(text: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let json = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read `{path}`: {e}"))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("--claims is not a JSON object: {e}"))
}

/// Asks a running gateway's admin endpoint.
fn explain_remote(admin: &str, args: &ExplainArgs) -> anyhow::Result<()> {
    let base = admin.trim_end_matches('/');
    let format = if args.output.json() { "" } else { "?format=text" };
    let (method, url, body) = match &args.decision {
        Some(id) => (http::Method::GET, format!("{base}/explain/{id}{format}"), String::new()),
        None => {
            let call = call_spec(args)?;
            let body = match (&args.issuer, token_of(args)?) {
                (Some(issuer), _) => serde_json::json!({
                    "principal": { "issuer": issuer, "claims": claims_of(args.claims.as_deref().unwrap_or("{}"))? },
                    "call": call,
                }),
                (None, Some(token)) => serde_json::json!({ "token": token, "call": call }),
                (None, None) => anyhow::bail!("give --decision ID, or a principal and a call"),
            };
            (http::Method::POST, format!("{base}/explain{format}"), body.to_string())
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) =
        runtime.block_on(async { ExchangeClient::new(None)?.request_text(method, &url, body).await })?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status}: {}", text.trim_end());
    }
    print!("{text}");
    Ok(())
}

fn check(path: PathBuf, output: OutputArgs) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let prepared = flowgate::server::prepare(&config)?;
    drop(prepared);
    let engine = PolicyEngine::load(&config.policy.dir)?;
    if !output.json() {
        println!("config ok: {}", path.display());
    }
    print_policy_report(&engine, output, Some(&path));
    Ok(())
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    init_tracing()?;
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
    let output = match args.output.json() {
        true => format!("{:#}\n", credential.to_response_json()),
        false => credential.token.clone(),
    };
    match &args.output_file {
        Some(path) => write_secret_file(path, output.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", path.display()))?,
        None => println!("{}", output.trim_end()),
    }
    Ok(())
}

fn login_command(args: LoginArgs) -> anyhow::Result<()> {
    use flowgate::login::{self, Flow, Gateway, LoginRequest, TemporalEnv};
    let gateway = Gateway::parse(&args.gateway.address)?;
    if !gateway.tls && !flowgate::outbound::is_https_or_loopback(&gateway.base) {
        eprintln!("warning: {} is plain http: your token will travel in clear to it", gateway.base);
    }
    let flow = match args.flow.as_deref() {
        Some("device") => Flow::Device,
        Some(_) => Flow::Browser { open: !args.no_browser },
        None if login::has_display() => Flow::Browser { open: !args.no_browser },
        None => Flow::Device,
    };
    let temporal_env = match args.temporal_env {
        None => None,
        Some(name) => Some(TemporalEnv {
            name,
            file: match args.temporal_env_file {
                Some(file) => file,
                None => login::temporal_env_file()?,
            },
            namespace: args.namespace,
        }),
    };
    let request = LoginRequest {
        gateway,
        issuer: args.issuer,
        flow,
        force: args.force,
        ca: args.gateway.ca,
        timeout: args.timeout,
        temporal_env,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // What the person must do goes to stderr, at once: stdout stays for data.
    let done = runtime.block_on(login::login(&request, |prompt| eprintln!("{prompt}")))?;
    let stored = &done.stored;
    let who = stored.who.as_deref().map(|w| format!(" as {w}")).unwrap_or_default();
    let how = if done.refreshed { "refreshed the login" } else { "logged in" };
    eprintln!(
        "{how} to {}{who} ({} issuer `{}`); the token is good for {} min, kept in {}",
        stored.gateway,
        stored.issuer_name,
        stored.issuer,
        stored.expires_in().as_secs() / 60,
        done.path.display()
    );
    if let Some(env) = &stored.temporal_env {
        eprintln!(
            "the Temporal CLI environment `{}` ({}) goes through the gateway: `temporal workflow list --env {}`",
            env.name,
            env.file.display(),
            env.name
        );
    }
    Ok(())
}

fn token_print(args: TokenPrintArgs) -> anyhow::Result<()> {
    let gateway = flowgate::login::Gateway::parse(&args.gateway.address)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stored = runtime.block_on(flowgate::login::current_token(&gateway, args.gateway.ca.as_deref()))?;
    if args.output.json() {
        let json = serde_json::json!({
            "access_token": stored.access_token,
            "expires_at": stored.expires_at,
            "issuer": stored.issuer,
            "gateway": stored.gateway,
        });
        println!("{json}");
    } else {
        println!("{}", stored.access_token);
    }
    Ok(())
}

fn logout(args: GatewayArgs) -> anyhow::Result<()> {
    let gateway = flowgate::login::Gateway::parse(&args.address)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = runtime.block_on(flowgate::login::logout(&gateway, args.ca.as_deref()))?;
    match (done.deleted, done.revoke_failed) {
        (false, _) => eprintln!("not logged in to {}", gateway.base),
        (true, None) => eprintln!("logged out of {}: the refresh token is revoked and the login deleted", gateway.base),
        (true, Some(why)) => {
            anyhow::bail!(
                "deleted the login to {}, but could not revoke it at the identity provider: {why}",
                gateway.base
            )
        }
    }
    Ok(())
}

fn sidecar(path: PathBuf) -> anyhow::Result<()> {
    init_tracing()?;
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
