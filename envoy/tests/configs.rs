//! The ready-made Envoy configurations in `envoy/configs/` stay valid: each is checked
//! by `envoy --mode validate` (from the repository root, where their paths point).

use std::process::Command;

#[test]
fn every_shipped_envoy_config_validates() {
    let root = portcullis_testbed::workspace_dir();
    let envoy = portcullis_envoy::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("envoy/configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(&envoy)
                .args(["--mode", "validate", "-l", "error", "-c"])
                .arg(&path)
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

/// Every HTTP connection manager in a value, wherever it sits.
fn managers(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("http_connection_manager.v3.HttpConnectionManager"))
            {
                out.push(v.clone());
            }
            m.values().for_each(|x| managers(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| managers(x, out)),
        _ => {}
    }
}

/// The attacks the gateway refuses at its edge (path tricks, forged forwarding and
/// identity headers) must fail in the shipped Envoy configs too: each connection
/// manager normalizes paths, refuses encoded slashes, and drops the client's
/// forwarding and identity headers before any filter runs. The harness the tests use
/// does the same.
#[test]
fn every_shipped_envoy_config_holds_the_edge() {
    let root = portcullis_testbed::workspace_dir();
    let mut configs: Vec<(String, serde_json::Value)> = Vec::new();
    for entry in std::fs::read_dir(root.join("envoy/configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value = serde_norway::from_str(&text).unwrap();
            configs.push((path.display().to_string(), v));
        }
    }
    configs.push((
        "the test harness".into(),
        portcullis_envoy::EnvoyConfig::new("127.0.0.1:9".parse().unwrap()).bootstrap(1, 2),
    ));
    for (name, config) in configs {
        let mut hcms = Vec::new();
        managers(&config, &mut hcms);
        assert!(!hcms.is_empty(), "{name}: no connection manager");
        for h in hcms {
            assert_eq!(h["normalize_path"], true, "{name}");
            assert_eq!(h["merge_slashes"], true, "{name}");
            assert_eq!(
                h["path_with_escaped_slashes_action"], "REJECT_REQUEST",
                "{name}"
            );
            assert_eq!(h["use_remote_address"], true, "{name}");
            assert_eq!(
                h["common_http_protocol_options"]["headers_with_underscores_action"], "DROP_HEADER",
                "{name}: x_consumer_id would reach a CGI-style upstream as x-consumer-id"
            );
            let mutations = h["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let removes = |name: &str| mutations.iter().any(|m| m["remove"] == name);
            assert!(
                mutations
                    .iter()
                    .any(|m| m["remove_on_match"]["key_matcher"]["prefix"] == "x-consumer-"),
                "{name}: x-consumer-* not removed"
            );
            for header in [
                "x-credential-identifier",
                "x-forwarded-for",
                "x-forwarded-host",
                "forwarded",
            ] {
                assert!(removes(header), "{name}: {header} not removed");
            }
        }
    }
}
