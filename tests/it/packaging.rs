//! What the packages ship beside the binary stays true to the code: the documented
//! configuration file is the generator's output, the man page and completions are made from the
//! command-line definition, and the Grafana dashboard and Prometheus alert rules name only
//! metrics a running server exports.

use std::collections::BTreeSet;

use regex::Regex;

use crate::support::{TestServer, cli, config_for};

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn the_packaged_config_file_is_generated_from_the_config_types() {
    let (code, generated, err) = cli(&["generate", "config"], &[], None);
    assert_eq!(code, 0, "{err}");
    let committed = repo_file("packaging/outpost.toml");
    assert!(
        committed == generated,
        "packaging/outpost.toml is out of step with the code; regenerate it with\n  \
         cargo run -- generate config > packaging/outpost.toml"
    );
    // Every key is there with a value or, when it is unset by default, as a commented example.
    for key in ["data_dir", "body_limit_bytes", "queue_len_max", "write_coalesce_ms", "turn_allow_loopback_peers"] {
        assert!(generated.lines().any(|l| l.starts_with(&format!("{key} = "))), "{key} missing");
    }
    for key in ["master_key_file", "cert_file", "key_file", "public_ip"] {
        assert!(generated.lines().any(|l| l.starts_with(&format!("# {key} = "))), "{key} missing");
    }
}

#[test]
fn man_page_and_completions_come_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = cli(&["generate", "man", d], &[], None);
    assert_eq!(code, 0, "{err}");
    let man = std::fs::read_to_string(dir.path().join("outpost.1")).unwrap();
    assert!(man.starts_with(".ie") || man.contains(".TH outpost 1"), "{}", &man[..man.len().min(300)]);
    for sub in ["serve", "backup", "restore", "operator", "config", "reindex"] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
    assert!(man.contains("/etc/outpost/outpost.toml") && man.contains("/var/lib/outpost"), "no FILES section");
    // A page per subcommand; the packaging helper itself is hidden from users.
    assert!(dir.path().join("outpost-operator-create-key.1").exists());
    assert!(!man.contains("generate") && !dir.path().join("outpost-generate.1").exists(), "generate shows");
    for (shell, file) in [("bash", "outpost.bash"), ("zsh", "_outpost"), ("fish", "outpost.fish")] {
        let (code, out, err) = cli(&["generate", "completions", shell, d], &[], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.trim_end().ends_with(file), "{out}");
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(text.contains("create-key") && text.contains("config"), "{shell} completion incomplete");
    }
}

/// Metric names a Prometheus query may use for what `/metrics` exposes: the families from
/// `# TYPE` lines with the suffixes their type gives samples, and every sample's name.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.limits.login_per_addr_per_min = 1;
    let s = TestServer::start_with(config).await;
    // Some traffic first, so labelled families have samples too (a family with none is not
    // shown): a request, and a login refused by its rate limit.
    s.create_org(&crate::support::slug("dash")).await;
    for _ in 0..3 {
        let body = serde_json::json!({ "org": "nope", "login": "nobody", "password": "not this one" });
        s.post("/v1/auth/login", &body).send().await.unwrap();
    }
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let exported = exported_names(&text);
    assert!(exported.contains("outpost_http_requests_total"), "{text}");

    let names = Regex::new(r"\boutpost_[a-z0-9_]+").unwrap();
    let dashboard = repo_file("packaging/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() > 10));
    let alerts = repo_file("packaging/prometheus-alerts.yml");
    let mut unknown = Vec::new();
    for (file, body) in [("packaging/grafana-dashboard.json", &dashboard), ("packaging/prometheus-alerts.yml", &alerts)]
    {
        let used: BTreeSet<&str> = names.find_iter(body).map(|m| m.as_str()).collect();
        assert!(used.len() >= 8, "{file} uses only {used:?}");
        unknown.extend(used.into_iter().filter(|n| !exported.contains(*n)).map(|n| format!("{file}: {n}")));
    }
    assert!(unknown.is_empty(), "not exported by the server:\n{}\nexported: {exported:?}", unknown.join("\n"));
    s.stop().await;
}
