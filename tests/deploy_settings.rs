//! Settings drift between the binaries and the deployment files: every setting of
//! `.env.example` can be set through the Helm chart's values and through the compose
//! file, nothing in docker/ or helm/ names a setting the binaries do not know, and the
//! chart's defaults are `.env.example`'s except where a cluster needs another.

mod common;
mod deploy;

use std::collections::{BTreeMap, BTreeSet};

use common::setting_names;
use deploy::{root, yaml_documents};

/// Every `EFFP_*` setting `.env.example` documents (set or commented out), with the
/// default it gives (empty where it is commented out).
fn env_example() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let mut settings = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((name, value)) = line.split_once('=')
            && name.starts_with("EFFP_")
            && !name.contains(' ')
        {
            let commented = text
                .lines()
                .any(|l| l.starts_with('#') && l.contains(&format!("{name}=")));
            let value = if commented { "" } else { value };
            settings.insert(name.to_string(), value.to_string());
        }
    }
    assert!(settings.len() > 30, "{settings:?}");
    settings
}

/// The settings the binaries know: `effp serve`, `effp worker` and `effp-agent` list
/// each with its environment variable in `--help`.
fn known_settings() -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    for command in ["serve", "worker"] {
        let help = common::effp(&[command, "--help"]);
        assert!(help.status.success());
        known.extend(setting_names(&common::text(&help.stdout)));
    }
    let help = std::process::Command::new(common::agent_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let agent_settings = setting_names(&common::text(&help.stdout));
    assert!(agent_settings.contains("EFFP_AGENT_SERVER"));
    known.extend(agent_settings);
    known
}

/// Every file of the deployment, as (path, text).
fn deployment_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("docker"), root().join("helm")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                let name = path.strip_prefix(root()).unwrap().display().to_string();
                files.push((name, text));
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    files
}

#[test]
fn every_setting_of_env_example_can_be_set_in_compose() {
    let compose = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let missing: Vec<_> = env_example()
        .into_keys()
        .filter(|name| !compose.contains(&format!("${{{name}:-")))
        .collect();
    assert!(
        missing.is_empty(),
        "docker/compose.yaml does not read these settings from the environment: {missing:?}"
    );
}

/// The chart's default values as JSON.
fn chart_values() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("helm/effp/values.yaml")).unwrap();
    yaml_documents(&text).remove(0)
}

#[test]
fn every_setting_of_env_example_can_be_set_in_the_charts_values() {
    let values = chart_values();
    let config = values["config"].as_object().expect("values.config");
    let secrets = values["secrets"]["values"]
        .as_object()
        .expect("values.secrets.values");
    let both: Vec<_> = config.keys().filter(|k| secrets.contains_key(*k)).collect();
    assert!(both.is_empty(), "set twice: {both:?}");
    let missing: Vec<_> = env_example()
        .into_keys()
        .filter(|name| !config.contains_key(name) && !secrets.contains_key(name))
        .collect();
    assert!(
        missing.is_empty(),
        "helm/effp/values.yaml has neither config nor secrets.values for: {missing:?}"
    );
    // The schema accepts exactly these names (a misspelt one fails `helm install`).
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("helm/effp/values.schema.json")).unwrap(),
    )
    .unwrap();
    let properties = |section: &serde_json::Value| -> BTreeSet<String> {
        assert_eq!(section["additionalProperties"], false);
        section["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let config_schema = properties(&schema["properties"]["config"]);
    let secrets_schema = properties(&schema["properties"]["secrets"]["properties"]["values"]);
    assert_eq!(config_schema, config.keys().cloned().collect());
    assert_eq!(secrets_schema, secrets.keys().cloned().collect());
}

#[test]
fn the_charts_defaults_are_env_examples_but_where_a_cluster_needs_others() {
    // A cluster listens on every interface, keeps scratch in its volume, and uses
    // Redis and S3 for records and objects.
    let cluster = [
        "EFFP_LISTEN",
        "EFFP_DATA_DIR",
        "EFFP_REDIS_URL",
        "EFFP_S3_BUCKET",
        "EFFP_WORKER_METRICS_LISTEN",
    ];
    let values = chart_values();
    let mut differing = Vec::new();
    for (name, default) in env_example() {
        if cluster.contains(&name.as_str()) {
            continue;
        }
        let value = values["config"]
            .get(&name)
            .or_else(|| values["secrets"]["values"].get(&name))
            .unwrap();
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if value != default {
            differing.push(format!("{name}: chart {value:?}, .env.example {default:?}"));
        }
    }
    assert!(differing.is_empty(), "{differing:#?}");
}

#[test]
fn nothing_in_docker_or_helm_names_a_setting_the_binaries_do_not_know() {
    let known = known_settings();
    let mut unknown = Vec::new();
    for (path, text) in deployment_files() {
        for name in setting_names(&text) {
            if !known.contains(&name) {
                unknown.push(format!("{path}: {name}"));
            }
        }
    }
    assert!(unknown.is_empty(), "unknown settings: {unknown:#?}");
    // And the check is live: the names it scanned include settings of all three.
    let all: BTreeSet<String> = deployment_files()
        .iter()
        .flat_map(|(_, t)| setting_names(t))
        .collect();
    for name in [
        "EFFP_REDIS_URL",
        "EFFP_WORKER_METRICS_LISTEN",
        "EFFP_AGENT_KEY",
    ] {
        assert!(all.contains(name), "{name}");
    }
}
