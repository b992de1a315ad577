//! The command line's conventions: shell completions that a shell loads, a manual page
//! generated from the same definition, the Temporal CLI's `--address` and `-o/--output`,
//! environment variables for the config and the gateway, Cedar's names for policy commands.

use std::process::Command;

fn flowgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command.args(args).env_remove("FLOWGATE_CONFIG").env_remove("FLOWGATE_ADDRESS");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("flowgate runs")
}

#[test]
fn bash_loads_the_completions_and_completes_subcommands() {
    let script = flowgate(&["completions", "bash"], &[]);
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flowgate.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // Source it in a non-interactive bash, then ask the completion function what follows
    // `flowgate lo` and `flowgate policy `.
    let probe = format!(
        r#"source {file}
complete -p flowgate
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}; _flowgate flowgate "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"; echo "${{COMPREPLY[*]}}"; }}
complete_words flowgate lo
complete_words flowgate policy ''
"#,
        file = file.display()
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("flowgate"), "{stdout}");
    assert!(lines[1].split_whitespace().any(|w| w == "login") && lines[1].contains("logout"), "{stdout}");
    for command in ["validate", "test", "fmt", "schema", "format", "run-tests"] {
        assert!(lines[2].split_whitespace().any(|w| w == command), "`{command}` in {stdout}");
    }
    for shell in ["zsh", "fish"] {
        let script = flowgate(&["completions", shell], &[]);
        assert!(script.status.success() && !script.stdout.is_empty(), "{shell}");
    }
}

#[test]
fn the_manual_page_is_generated_from_the_cli() {
    let page = flowgate(&["man"], &[]);
    assert!(page.status.success());
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(text.contains(".TH flowgate 1"), "{text}");
    for command in ["serve", "check", "login", "logout", "token", "completions"] {
        assert!(text.contains(command), "`{command}` is not in the manual page");
    }
}

#[test]
fn cedars_names_for_policy_commands_and_the_config_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
    std::fs::write(dir.path().join("a.cedar"), "@id(\"all\")\npermit(principal,action,resource);\n").unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let unformatted = flowgate(&["policy", "format", "--check", dir_arg], &[]);
    assert!(!unformatted.status.success(), "`format` is `fmt`: the file is not formatted yet");
    assert!(flowgate(&["policy", "format", dir_arg], &[]).status.success());
    let formatted = flowgate(&["policy", "format", "--check", dir_arg], &[]);
    assert!(formatted.status.success(), "{}", String::from_utf8_lossy(&formatted.stderr));
    let tests = flowgate(&["policy", "run-tests", dir_arg], &[]);
    // No test files: run-tests is `policy test`, which says so.
    assert!(String::from_utf8_lossy(&tests.stderr).contains("no test files"), "{tests:?}");

    // FLOWGATE_CONFIG stands for --config.
    let missing = dir.path().join("nope.toml");
    let checked = flowgate(&["check"], &[("FLOWGATE_CONFIG", missing.to_str().unwrap())]);
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stderr).contains("nope.toml"), "{checked:?}");
}

#[test]
fn the_gateway_address_as_the_temporal_cli_names_it() {
    // --address and FLOWGATE_ADDRESS reach `token exchange` (the gateway is not there: the
    // error names the address that was given).
    let unreachable = "http://127.0.0.1:9";
    for (args, env) in [
        (vec!["token", "exchange", "--address", unreachable], vec![]),
        (vec!["token", "exchange"], vec![("FLOWGATE_ADDRESS", unreachable)]),
    ] {
        let mut args = args.clone();
        args.extend(["--subject-token-env", "HOME", "--scope", "namespace:payments role:read"]);
        let out = flowgate(&args, &env);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"), "{out:?}");
    }
    // `token print` without a login says how to get one.
    let home = tempfile::tempdir().unwrap();
    let out = flowgate(
        &["token", "print", "-o", "json"],
        &[("FLOWGATE_ADDRESS", "127.0.0.1:7233"), ("HOME", home.path().to_str().unwrap()), ("XDG_CONFIG_HOME", "")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("run `flowgate login --address 127.0.0.1:7233`"), "{stderr}");
    // -o takes only text or json.
    let out = flowgate(&["token", "print", "--address", "127.0.0.1:7233", "-o", "yaml"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"), "{out:?}");
}

/// `-o json` on every command that prints data: one JSON document on stdout, errors still on
/// stderr with a failing exit.
#[test]
fn commands_that_print_data_print_json_with_o_json() {
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
    std::fs::write(policies.join("a.cedar"), "@id(\"all\")\npermit(principal, action, resource);\n").unwrap();
    let p = policies.to_str().unwrap();

    let validated = flowgate(&["policy", "validate", p, "-o", "json"], &[]);
    assert!(validated.status.success());
    let report = json(&validated);
    assert_eq!((report["ok"].as_bool(), report["policies"].as_u64()), (Some(true), Some(1)), "{report}");
    assert!(report["version"].is_string() && report["warnings"].is_array(), "{report}");

    std::fs::write(policies.join("b.cedar"), "permit(principal, action, resource) when { nope };\n").unwrap();
    let invalid = flowgate(&["policy", "validate", p, "-o", "json"], &[]);
    assert!(!invalid.status.success());
    let report = json(&invalid);
    assert_eq!(report["ok"], false);
    let error = &report["errors"][0];
    assert!(error["file"].as_str().unwrap().ends_with("b.cedar") && error["line"] == 1, "{report}");
    std::fs::remove_file(policies.join("b.cedar")).unwrap();

    std::fs::create_dir(policies.join("tests")).unwrap();
    std::fs::write(
        policies.join("tests/t.yaml"),
        "issuers:\n  okta: { preset: okta }\ncases:\n  - name: anyone may describe\n    \
         principal: { issuer: okta, claims: { sub: alice } }\n    \
         call: { method: DescribeNamespace, namespace: payments }\n    expect: allow\n",
    )
    .unwrap();
    let tested = flowgate(&["policy", "test", p, "-o", "json"], &[]);
    let report = json(&tested);
    assert_eq!((report["passed"].as_u64(), report["failed"].as_u64()), (Some(1), Some(0)), "{report}");
    assert_eq!(report["cases"][0]["outcome"], "passed", "{report}");

    let keys = dir.path().join("keys");
    let generated = flowgate(&["keys", "generate", keys.to_str().unwrap(), "-o", "json"], &[]);
    assert!(generated.status.success(), "{generated:?}");
    let key = json(&generated);
    let listed = json(&flowgate(&["keys", "list", keys.to_str().unwrap(), "-o", "json"], &[]));
    assert_eq!(listed[0]["kid"], key["kid"], "{listed}");

    let log = dir.path().join("decisions.jsonl");
    std::fs::write(&log, "").unwrap();
    let verified = flowgate(&["audit", "verify", log.to_str().unwrap(), "-o", "json"], &[]);
    assert!(verified.status.success(), "{verified:?}");
    let report = json(&verified);
    assert_eq!((report["intact"].as_bool(), report["lines"].as_u64()), (Some(true), Some(0)), "{report}");

    let config = dir.path().join("flowgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"http://127.0.0.1:7233\"\n\
             [policy]\ndir = {p:?}\n[audit]\npath = \"-\"\n"
        ),
    )
    .unwrap();
    let checked = flowgate(&["check", "--config", config.to_str().unwrap(), "-o", "json"], &[]);
    assert!(checked.status.success(), "{checked:?}");
    let report = json(&checked);
    assert_eq!(report["ok"], true);
    assert!(report["config"].as_str().unwrap().ends_with("flowgate.toml"), "{report}");
}
