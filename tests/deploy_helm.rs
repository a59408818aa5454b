//! The Helm chart `helm/effp`, rendered offline (no cluster): `helm lint --strict`
//! with the default values and each `ci/` values file; every rendered manifest valid
//! against the Kubernetes schemas (`kubernetes-validate --strict`) and yamllint; what
//! the manifests do (the API's probes, arguments and settings, the workers' GPU,
//! toleration and grace period, non-root read-only containers, the generated keys,
//! the optional Ingress, autoscaler, budgets, ServiceMonitor and Jetson agent, an
//! existing Secret); the values schema refusing unknown settings and malformed keys;
//! and NOTES.txt.

mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The chart, relative to the repository's root.
const CHART: &str = "helm/effp";
/// The release name of every render: the chart's name, so objects are `effp-…`.
const RELEASE: &str = "effp";
/// The namespace of every render.
const NAMESPACE: &str = "effp-test";
/// Kubernetes versions the manifests must be valid for: the chart's `kubeVersion`
/// minimum and a current one.
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.30.0"];
/// The settings of `.env.example` that the chart keeps in its Secret; the others
/// are `config` entries (the ConfigMap).
const SECRET_SETTINGS: [&str; 6] = [
    "EFFP_API_KEYS",
    "EFFP_AGENT_KEYS",
    "EFFP_REDIS_URL",
    "EFFP_S3_ACCESS_KEY_ID",
    "EFFP_S3_SECRET_ACCESS_KEY",
    "EFFP_WEBHOOK_SECRET",
];

/// The chart's folder.
fn chart() -> PathBuf {
    deploy::root().join(CHART)
}

/// The values files under the chart's `ci/`, sorted.
fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("helm/effp/ci exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `helm template` of the chart (release [`RELEASE`] in [`NAMESPACE`]) with `args`.
fn helm_template(args: &[&str]) -> Output {
    Command::new(deploy::tool("helm"))
        .current_dir(deploy::root())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("helm runs")
}

/// The manifests `helm template` renders with `args`, as text; panics when it fails.
fn render_text(args: &[&str]) -> String {
    let output = helm_template(args);
    assert!(
        output.status.success(),
        "helm template {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The manifests `helm template` renders with `args`, parsed.
fn render(args: &[&str]) -> Vec<Value> {
    deploy::yaml_documents(&render_text(args))
}

/// The error of a `helm template` with `args` that must fail.
fn render_error(args: &[&str]) -> String {
    let output = helm_template(args);
    assert!(
        !output.status.success(),
        "helm template {args:?} should have failed but rendered:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `-f <chart>/ci/<name>` as arguments of [`render`].
fn ci_file(name: &str) -> String {
    format!("{CHART}/ci/{name}")
}

/// The documents of `kind`.
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one document of `kind` named `name`.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = of_kind(docs, kind)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} named {name}");
    found[0]
}

/// The strings of a JSON array (panics on anything else).
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

/// The first container of a workload (Deployment or DaemonSet).
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

/// The ConfigMaps and the Secrets a container takes its environment from (envFrom).
fn env_from(container: &Value) -> (Vec<&str>, Vec<&str>) {
    let sources = container["envFrom"]
        .as_array()
        .expect("the container has envFrom");
    let names = |kind: &str| -> Vec<&str> {
        sources
            .iter()
            .filter_map(|s| s[kind]["name"].as_str())
            .collect()
    };
    (names("configMapRef"), names("secretRef"))
}

/// The named environment variable of a container.
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("the container has no variable {name}"))
}

/// Decodes standard base64 (what a Secret's `data` holds).
fn base64_decode(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {text}"));
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    String::from_utf8(bytes).expect("a Secret value is UTF-8")
}

/// A Secret's data, decoded.
fn secret_data(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .expect("the Secret has data")
        .iter()
        .map(|(k, v)| (k.clone(), base64_decode(v.as_str().unwrap())))
        .collect()
}

/// The `name:key` entries of a key list (`EFFP_API_KEYS`, `EFFP_AGENT_KEYS`).
fn key_entries(list: &str) -> BTreeMap<String, String> {
    list.split(',')
        .map(|entry| {
            let (name, key) = entry
                .split_once(':')
                .unwrap_or_else(|| panic!("'{entry}' is not name:key"));
            (name.trim().to_string(), key.trim().to_string())
        })
        .collect()
}

/// Whether a label selector (matchLabels, and matchExpressions with In, NotIn,
/// Exists) selects `labels`; an empty selector selects nothing here.
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |key: &str| labels[key].as_str();
    let match_labels = selector["matchLabels"].as_object();
    let expressions = selector["matchExpressions"].as_array();
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let by_label = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expression = expressions.into_iter().flatten().all(|e| {
        let value = label(e["key"].as_str().unwrap());
        let values = e["values"].as_array().cloned().unwrap_or_default();
        let listed = value.is_some_and(|v| values.iter().any(|x| x == v));
        match e["operator"].as_str().unwrap() {
            "In" => listed,
            "NotIn" => !listed,
            "Exists" => value.is_some(),
            other => panic!("operator {other} is not handled here"),
        }
    });
    by_label && by_expression
}

/// Whether a Service's selector (a plain label map) selects `labels`.
fn service_selects(service: &Value, labels: &Value) -> bool {
    selects(
        &serde_json::json!({ "matchLabels": service["spec"]["selector"] }),
        labels,
    )
}

/// The labels of a workload's pods.
fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

/// Checks what every Deployment and DaemonSet of `docs` must do: select its own
/// pods, run as a non-root user with a read-only root filesystem, no privilege
/// escalation, every capability dropped and the runtime's seccomp profile, with a
/// writable `/tmp`, and without the ServiceAccount's token.
fn assert_workloads_are_locked_down(docs: &[Value]) {
    let workloads: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .collect();
    assert!(!workloads.is_empty());
    for workload in workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        assert!(
            selects(&workload["spec"]["selector"], pod_labels(workload)),
            "{name}: its selector does not select its own pods"
        );
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let pod_security = &pod["securityContext"];
        assert_eq!(
            pod_security["runAsNonRoot"], true,
            "{name}: pod runAsNonRoot"
        );
        assert!(
            pod_security["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{name}: the pod must run as a non-root user id"
        );
        assert_eq!(
            pod_security["seccompProfile"]["type"], "RuntimeDefault",
            "{name}: seccomp profile"
        );
        for c in pod["containers"].as_array().unwrap() {
            let security = &c["securityContext"];
            let what = format!("{name}/{}", c["name"]);
            assert_eq!(security["runAsNonRoot"], true, "{what}: runAsNonRoot");
            assert_eq!(
                security["readOnlyRootFilesystem"], true,
                "{what}: readOnlyRootFilesystem"
            );
            assert_eq!(
                security["allowPrivilegeEscalation"], false,
                "{what}: allowPrivilegeEscalation"
            );
            assert_eq!(
                strings(&security["capabilities"]["drop"]),
                ["ALL"],
                "{what}: capabilities must all be dropped"
            );
            assert!(
                security["capabilities"]["add"].is_null(),
                "{what}: adds capabilities"
            );
            let mounts = c["volumeMounts"].as_array().unwrap();
            assert!(
                mounts.iter().any(|m| m["mountPath"] == "/tmp"),
                "{what}: /tmp must be a writable volume (the root filesystem is read-only)"
            );
        }
    }
}

/// Checks a ServiceMonitor's structure. kubernetes-validate has no schema for the
/// Prometheus operator's CRD (it only warns "Couldn't find schema for kind
/// ServiceMonitor" and passes), so its fields are checked here: only known fields,
/// and it selects exactly `services` in its namespace, with an endpoint per
/// Service's port scraping `/metrics`.
fn assert_service_monitor(monitor: &Value, docs: &[Value], services: &[&str]) {
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let spec = monitor["spec"].as_object().unwrap();
    let known = ["endpoints", "selector", "namespaceSelector", "jobLabel"];
    assert!(
        spec.keys().all(|k| known.contains(&k.as_str())),
        "unknown ServiceMonitor fields: {:?}",
        spec.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
        [NAMESPACE]
    );
    let selected: BTreeSet<&str> = of_kind(docs, "Service")
        .into_iter()
        .filter(|s| selects(&monitor["spec"]["selector"], &s["metadata"]["labels"]))
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        selected,
        services.iter().copied().collect(),
        "the ServiceMonitor selects other Services"
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    let endpoint_fields = ["port", "path", "interval", "scrapeTimeout", "scheme"];
    for endpoint in endpoints {
        let fields = endpoint.as_object().unwrap();
        assert!(
            fields.keys().all(|k| endpoint_fields.contains(&k.as_str())),
            "unknown endpoint fields: {endpoint}"
        );
        assert_eq!(endpoint["path"], "/metrics");
        assert!(endpoint["interval"].as_str().unwrap().ends_with('s'));
    }
    // Each selected Service has a port that an endpoint scrapes.
    for name in services {
        let service = find(docs, "Service", name);
        let ports: Vec<&Value> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["name"])
            .collect();
        assert!(
            endpoints.iter().any(|e| ports.contains(&&e["port"])),
            "no endpoint scrapes a port of {name}"
        );
    }
}

/// Writes each document but the ServiceMonitors to its own file in a new folder and
/// checks them with `kubernetes-validate --strict` for each of [`KUBE_VERSIONS`]:
/// every one must pass (a warning, e.g. no schema for its kind, fails too).
fn assert_valid_kubernetes(docs: &[Value], label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        // The ServiceMonitor CRD has no schema here: see assert_service_monitor.
        if doc["kind"] == "ServiceMonitor" {
            continue;
        }
        let path = dir
            .path()
            .join(format!("{i:02}-{}.json", doc["kind"].as_str().unwrap()));
        std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        files.push(path);
    }
    for version in KUBE_VERSIONS {
        let output = deploy::run_ok(
            Command::new(deploy::tool("kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", version])
                .args(&files),
        );
        let report = String::from_utf8_lossy(&output.stdout);
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed,
            files.len(),
            "{label}: not every manifest passed kubernetes-validate {version}:\n{report}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "{label}: kubernetes-validate {version}:\n{report}"
        );
    }
}

/// Runs yamllint (the repository's `.yamllint.yaml`, warnings as errors) on `paths`
/// from the repository's root.
fn yamllint(paths: &[&Path]) {
    let root = deploy::root();
    deploy::run_ok(
        Command::new(deploy::tool("yamllint"))
            .current_dir(&root)
            .arg("--strict")
            .args(["-f", "parsable", "-c"])
            .arg(root.join(".yamllint.yaml"))
            .args(paths),
    );
}

/// The chart's values.yaml, parsed.
fn default_values() -> Value {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    deploy::yaml_documents(&text).remove(0)
}

#[test]
fn lint_passes_with_the_default_values_and_every_ci_values_file() {
    let helm = deploy::tool("helm");
    let files = ci_values_files();
    assert!(
        files.iter().any(|f| f.ends_with("all-values.yaml"))
            && files
                .iter()
                .any(|f| f.ends_with("existing-secret-values.yaml")),
        "ci/ lacks all-values.yaml or existing-secret-values.yaml: {files:?}"
    );
    deploy::run_ok(Command::new(&helm).args(["lint", "--strict"]).arg(chart()));
    for file in files {
        deploy::run_ok(
            Command::new(&helm)
                .args(["lint", "--strict"])
                .arg(chart())
                .arg("-f")
                .arg(&file),
        );
    }
}

#[test]
fn rendered_manifests_are_valid_kubernetes_and_pass_yamllint() {
    let renders = [
        ("default values", vec![]),
        (
            "ci/all-values.yaml",
            vec!["-f".to_string(), ci_file("all-values.yaml")],
        ),
        (
            "ci/existing-secret-values.yaml",
            vec!["-f".to_string(), ci_file("existing-secret-values.yaml")],
        ),
        (
            "CPU workers",
            vec!["--set".to_string(), "worker.gpu=0".to_string()],
        ),
    ];
    for (label, args) in renders {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = render_text(&args);
        let docs = deploy::yaml_documents(&text);
        assert_valid_kubernetes(&docs, label);
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("rendered.yaml");
        std::fs::write(&stream, &text).unwrap();
        yamllint(&[&stream]);
    }
}

#[test]
fn chart_values_and_metadata_pass_yamllint() {
    let root = deploy::root();
    let mut paths = vec![
        root.join(".yamllint.yaml"),
        chart().join("Chart.yaml"),
        chart().join("values.yaml"),
    ];
    paths.extend(ci_values_files());
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    yamllint(&paths);
}

#[test]
fn default_render_runs_the_api_and_gpu_workers_with_generated_keys() {
    let docs = render(&[]);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for absent in [
        "Ingress",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "DaemonSet",
    ] {
        assert!(
            !kinds.contains(absent),
            "{absent} is off by default: {kinds:?}"
        );
    }
    assert_workloads_are_locked_down(&docs);

    // The API.
    let api = find(&docs, "Deployment", "effp-api");
    assert_eq!(api["spec"]["replicas"], 2);
    let c = container(api);
    assert_eq!(c["image"], "effp/api:0.1.0");
    assert_eq!(strings(&c["args"]), ["serve", "--no-worker"]);
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(env_from(c), (vec!["effp-config"], vec!["effp-secrets"]));
    assert_eq!(
        api["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/var/lib/effp"),
        "the API needs its writable data directory"
    );
    let service = find(&docs, "Service", "effp-api");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert!(service_selects(service, pod_labels(api)));
    let budget = find(&docs, "PodDisruptionBudget", "effp-api");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert!(selects(&budget["spec"]["selector"], pod_labels(api)));
    assert!(
        of_kind(&docs, "PodDisruptionBudget").len() == 1,
        "the workers have no budget by default"
    );

    // The workers.
    let worker = find(&docs, "Deployment", "effp-worker");
    assert_eq!(worker["spec"]["replicas"], 1);
    let pod = &worker["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 120);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let tolerations = pod["tolerations"].as_array().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == "nvidia.com/gpu" && t["effect"] == "NoSchedule"),
        "the workers must tolerate the GPU nodes' taint: {tolerations:?}"
    );
    let c = container(worker);
    assert_eq!(c["image"], "effp/worker:0.1.0");
    assert_eq!(strings(&c["args"]), ["worker"]);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(env_from(c), (vec!["effp-config"], vec!["effp-secrets"]));
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    let metrics = find(&docs, "Service", "effp-worker");
    assert!(service_selects(metrics, pod_labels(worker)));
    assert!(!service_selects(metrics, pod_labels(api)));
    assert!(!service_selects(service, pod_labels(worker)));
    assert_eq!(
        api["spec"]["template"]["metadata"]["annotations"]["checksum/settings"],
        worker["spec"]["template"]["metadata"]["annotations"]["checksum/settings"],
        "the API and the workers roll on the same settings"
    );

    // The settings: every non-empty config value in the ConfigMap, as a string.
    let config = find(&docs, "ConfigMap", "effp-config")["data"]
        .as_object()
        .unwrap();
    let values = default_values();
    for (name, value) in values["config"].as_object().unwrap() {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("config.{name} is a string"));
        if value.is_empty() {
            assert!(!config.contains_key(name), "empty {name} must be left out");
        } else {
            assert_eq!(config[name], value, "ConfigMap {name}");
        }
    }
    assert_eq!(config["EFFP_LISTEN"], "0.0.0.0:8080");
    assert_eq!(config["EFFP_WORKER_METRICS_LISTEN"], "0.0.0.0:9464");
    assert!(
        config
            .keys()
            .all(|k| !SECRET_SETTINGS.contains(&k.as_str())),
        "a secret setting is in the ConfigMap"
    );

    // The Secret: generated keys and webhook secret, the given Redis URL.
    let secret = secret_data(find(&docs, "Secret", "effp-secrets"));
    let api_keys = key_entries(&secret["EFFP_API_KEYS"]);
    let tenant_key = &api_keys["default"];
    assert_eq!(api_keys.len(), 1);
    assert!(
        tenant_key.len() >= 16 && tenant_key.chars().all(|c| c.is_ascii_alphanumeric()),
        "generated API key {tenant_key:?}"
    );
    let agent_keys = key_entries(&secret["EFFP_AGENT_KEYS"]);
    let agent_key = &agent_keys["jetson"];
    assert!(agent_key.len() >= 16, "generated agent key {agent_key:?}");
    assert_ne!(agent_key, tenant_key, "an agent key must not be a tenant's");
    assert_eq!(
        &secret["agent-key"], agent_key,
        "agent-key holds the key of agent jetson"
    );
    assert!(secret["EFFP_WEBHOOK_SECRET"].len() >= 16);
    assert_eq!(secret["EFFP_REDIS_URL"], "redis://redis:6379/0");
    assert!(
        !secret.contains_key("EFFP_S3_ACCESS_KEY_ID"),
        "empty S3 credentials are left out (the AWS chain applies)"
    );

    // Keys are generated per install, not fixed in the chart.
    let again = secret_data(find(&render(&[]), "Secret", "effp-secrets"));
    assert_ne!(again["EFFP_API_KEYS"], secret["EFFP_API_KEYS"]);
}

#[test]
fn all_options_render_ingress_autoscaler_budgets_monitor_and_agent() {
    let docs = render(&["-f", &ci_file("all-values.yaml")]);
    assert_workloads_are_locked_down(&docs);
    let api = find(&docs, "Deployment", "effp-all-api");
    let worker = find(&docs, "Deployment", "effp-all-worker");

    let ingress = find(&docs, "Ingress", "effp-all-api");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let tls = &ingress["spec"]["tls"][0];
    assert_eq!(tls["secretName"], "effp-tls");
    assert!(strings(&tls["hosts"]).contains(&"effp.example.com"));
    let rules = ingress["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["host"], "effp.example.com");
    let backend = &rules[0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], "effp-all-api");
    assert_eq!(backend["port"]["name"], "http");

    let autoscaler = find(&docs, "HorizontalPodAutoscaler", "effp-all-api");
    let target = &autoscaler["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], "effp-all-api");
    assert_eq!(autoscaler["spec"]["minReplicas"], 3);
    assert_eq!(autoscaler["spec"]["maxReplicas"], 10);
    assert_eq!(
        autoscaler["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    assert!(
        api["spec"].get("replicas").is_none(),
        "with the autoscaler the Deployment must leave replicas alone"
    );

    let api_budget = find(&docs, "PodDisruptionBudget", "effp-all-api");
    assert_eq!(api_budget["spec"]["minAvailable"], 2);
    assert!(selects(&api_budget["spec"]["selector"], pod_labels(api)));
    let worker_budget = find(&docs, "PodDisruptionBudget", "effp-all-worker");
    assert_eq!(worker_budget["spec"]["maxUnavailable"], 1);
    assert!(selects(
        &worker_budget["spec"]["selector"],
        pod_labels(worker)
    ));
    assert!(!selects(
        &worker_budget["spec"]["selector"],
        pod_labels(api)
    ));

    let monitor = find(&docs, "ServiceMonitor", "effp-all");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_service_monitor(monitor, &docs, &["effp-all-api", "effp-all-worker"]);

    // Workers: two GPUs each, the given grace period, runtime class and images.
    let pod = &worker["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 300);
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(
        container(worker)["resources"]["limits"]["nvidia.com/gpu"],
        2
    );
    assert_eq!(
        container(worker)["image"],
        "registry.example.com/effp/worker:0.1.0"
    );
    assert_eq!(
        container(api)["image"],
        "registry.example.com/effp/api:0.1.0-rc1"
    );
    assert_eq!(container(api)["ports"][0]["containerPort"], 8080);

    // The given secret settings, the agent's key among them.
    let secret = secret_data(find(&docs, "Secret", "effp-all-secrets"));
    assert_eq!(
        secret["EFFP_API_KEYS"],
        "acme:acme-key-0123456789abcdef,beta:beta-key-0123456789abcdef"
    );
    assert_eq!(secret["EFFP_S3_ACCESS_KEY_ID"], "minio");
    assert_eq!(secret["agent-key"], "orin-key-0123456789abcdef");
    let config = &find(&docs, "ConfigMap", "effp-all-config")["data"];
    assert_eq!(
        config["EFFP_WORKER_CONCURRENCY"], "2",
        "numbers become strings"
    );
    assert_eq!(config["EFFP_S3_ENDPOINT"], "http://minio.storage.svc:9000");

    // The agent DaemonSet on the Jetson nodes.
    let agent = find(&docs, "DaemonSet", "effp-all-agent");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "arm64");
    assert_eq!(pod["nodeSelector"]["effp.io/device"], "jetson-orin-nano");
    let volumes = pod["volumes"].as_array().unwrap();
    let tensorrt = volumes
        .iter()
        .find(|v| v["hostPath"]["path"] == "/usr/src/tensorrt/bin")
        .expect("the host's TensorRT folder is mounted");
    let c = container(agent);
    assert_eq!(c["image"], "registry.example.com/effp/agent:0.1.0");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == tensorrt["name"])
        .expect("the TensorRT volume is mounted in the agent");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        env(c, "EFFP_AGENT_TRTEXEC")["value"],
        format!("{}/trtexec", mount["mountPath"].as_str().unwrap())
    );
    let key = &env(c, "EFFP_AGENT_KEY")["valueFrom"]["secretKeyRef"];
    assert_eq!(key["name"], "effp-all-secrets");
    assert_eq!(key["key"], "agent-key");
    assert_eq!(
        env(c, "EFFP_AGENT_SERVER")["value"],
        format!("http://effp-all-api.{NAMESPACE}.svc:8080"),
        "the agent reaches the API Service on its port"
    );
    assert_eq!(env(c, "EFFP_AGENT_DEVICE")["value"], "jetson-orin-nano");
    assert_eq!(env(c, "EFFP_AGENT_RUNNER")["value"], "trtexec");
    assert_eq!(env(c, "EFFP_AGENT_WARMUP")["value"], "200");
    assert_eq!(env(c, "EFFP_AGENT_POLL_WAIT_S")["value"], "45");
    assert_eq!(
        env(c, "EFFP_AGENT_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
}

#[test]
fn cpu_workers_have_no_gpu_limit() {
    let docs = render(&["--set", "worker.gpu=0", "--set", "config.EFFP_DEVICE=cpu"]);
    let worker = container(find(&docs, "Deployment", "effp-worker"));
    assert!(
        worker["resources"]["limits"]
            .get("nvidia.com/gpu")
            .is_none(),
        "a CPU worker must not ask for a GPU: {}",
        worker["resources"]
    );
    assert_eq!(
        find(&docs, "ConfigMap", "effp-config")["data"]["EFFP_DEVICE"],
        "cpu"
    );
}

#[test]
fn an_existing_secret_replaces_the_charts() {
    let docs = render(&["-f", &ci_file("existing-secret-values.yaml")]);
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "the chart must make no Secret"
    );
    for name in ["effp-api", "effp-worker"] {
        let (_, secrets) = env_from(container(find(&docs, "Deployment", name)));
        assert_eq!(
            secrets,
            ["effp-credentials"],
            "{name} reads the given Secret"
        );
    }
    let agent = container(find(&docs, "DaemonSet", "effp-agent"));
    let key = &env(agent, "EFFP_AGENT_KEY")["valueFrom"]["secretKeyRef"];
    assert_eq!(key["name"], "effp-credentials");
    assert_eq!(key["key"], "agent-key");
}

#[test]
fn an_agent_key_value_becomes_the_agent_keys() {
    let key = "jetson-key-abcdefghijklmnop";
    let docs = render(&[
        "--set",
        "agent.enabled=true",
        "--set",
        &format!("agent.key={key}"),
    ]);
    let secret = secret_data(find(&docs, "Secret", "effp-secrets"));
    assert_eq!(secret["EFFP_AGENT_KEYS"], format!("jetson:{key}"));
    assert_eq!(secret["agent-key"], key);
    // A key the server would not know is refused.
    let error = render_error(&[
        "--set",
        &format!("agent.key={key}"),
        "--set",
        "secrets.values.EFFP_AGENT_KEYS=other:other-key-0123456789",
    ]);
    assert!(error.contains("agent.key is not one of"), "{error}");
}

#[test]
fn changing_a_setting_rolls_the_pods() {
    let checksum = |args: &[&str]| {
        let docs = render(args);
        let api = find(&docs, "Deployment", "effp-api");
        api["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let default = checksum(&[]);
    assert_eq!(default, checksum(&[]), "the checksum is stable");
    assert_ne!(default, checksum(&["--set", "config.EFFP_LOG=debug"]));
    assert_ne!(
        default,
        checksum(&[
            "--set",
            "secrets.values.EFFP_REDIS_URL=redis://other:6379/0"
        ])
    );
}

/// The settings `.env.example` documents: the names of its `NAME=value` lines, set
/// or commented out.
fn env_example_settings() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy::root().join(".env.example")).unwrap();
    text.lines()
        .filter_map(|line| line.trim_start_matches('#').trim().split_once('='))
        .map(|(name, _)| name)
        .filter(|name| {
            name.starts_with("EFFP_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn secret_settings_are_in_secrets_and_the_others_in_config() {
    let settings = env_example_settings();
    let secret: BTreeSet<String> = SECRET_SETTINGS.iter().map(|s| s.to_string()).collect();
    assert!(secret.is_subset(&settings), "{settings:?}");
    let config: BTreeSet<String> = settings.difference(&secret).cloned().collect();
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let values = default_values();
    assert_eq!(keys(&values["config"]), config, "values.yaml config");
    assert_eq!(
        keys(&values["secrets"]["values"]),
        secret,
        "values.yaml secrets.values"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let config_schema = &schema["properties"]["config"];
    let secrets_schema = &schema["properties"]["secrets"]["properties"]["values"];
    assert_eq!(keys(&config_schema["properties"]), config, "schema config");
    assert_eq!(
        keys(&secrets_schema["properties"]),
        secret,
        "schema secrets.values"
    );
    assert_eq!(config_schema["additionalProperties"], false);
    assert_eq!(secrets_schema["additionalProperties"], false);
}

#[test]
fn the_schema_and_the_templates_refuse_bad_values() {
    let refusals: [(&[&str], &str); 9] = [
        (
            &["--set", "config.EFFP_NOT_A_SETTING=1"],
            "EFFP_NOT_A_SETTING",
        ),
        (
            &["--set", "secrets.values.EFFP_NOT_A_SECRET=x"],
            "EFFP_NOT_A_SECRET",
        ),
        (
            &["--set", "secrets.values.EFFP_API_KEYS=short"],
            "EFFP_API_KEYS",
        ),
        (
            &["--set", "secrets.values.EFFP_API_KEYS=default:tooshort"],
            "EFFP_API_KEYS",
        ),
        (
            &["--set", "secrets.values.EFFP_AGENT_KEYS=jetson"],
            "EFFP_AGENT_KEYS",
        ),
        (
            &["--set", "secrets.values.EFFP_WEBHOOK_SECRET=short"],
            "EFFP_WEBHOOK_SECRET",
        ),
        (&["--set", "config.EFFP_DEVICE=tpu"], "EFFP_DEVICE"),
        (&["--set", "config.EFFP_S3_BUCKET="], "EFFP_S3_BUCKET"),
        (
            &["--set", "secrets.values.EFFP_REDIS_URL="],
            "EFFP_REDIS_URL",
        ),
    ];
    for (args, named) in refusals {
        let error = render_error(args);
        assert!(
            error.contains(named),
            "{args:?}: the error should name {named}: {error}"
        );
    }
    // A tenant's key reused as an agent key.
    let error = render_error(&[
        "--set",
        "secrets.values.EFFP_API_KEYS=acme:same-key-0123456789",
        "--set",
        "secrets.values.EFFP_AGENT_KEYS=jetson:same-key-0123456789",
    ]);
    assert!(error.contains("also an agent key"), "{error}");
    // Kubernetes older than the chart's kubeVersion.
    let error = render_error(&["--kube-version", "1.24.0"]);
    assert!(error.contains("kubeVersion"), "{error}");
    // Keys that satisfy the rules render.
    render(&[
        "--set",
        "secrets.values.EFFP_API_KEYS=a:0123456789abcdef\\,b:fedcba9876543210",
    ]);
}

/// NOTES.txt rendered with `args`. `helm install --dry-run=client` still needs a
/// reachable cluster and `helm template` leaves NOTES.txt out, so the test renders
/// a copy of the chart with NOTES.txt's text defined as a template and a ConfigMap
/// holding its output.
fn render_notes(args: &[&str]) -> String {
    let copy = tempfile::tempdir().unwrap();
    let chart_copy = copy.path().join("effp");
    copy_dir(&chart(), &chart_copy);
    let templates = chart_copy.join("templates");
    let notes = std::fs::read_to_string(templates.join("NOTES.txt")).unwrap();
    std::fs::write(
        templates.join("_notes_under_test.tpl"),
        format!("{{{{- define \"effp.notesUnderTest\" -}}}}\n{notes}{{{{- end }}}}\n"),
    )
    .unwrap();
    std::fs::write(
        templates.join("notes-under-test.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n  \
         notes: {{ include \"effp.notesUnderTest\" . | toJson }}\n",
    )
    .unwrap();
    let output = deploy::run_ok(
        Command::new(deploy::tool("helm"))
            .current_dir(deploy::root())
            .args(["template", RELEASE])
            .arg(&chart_copy)
            .args(["--namespace", NAMESPACE])
            .args(["--show-only", "templates/notes-under-test.yaml"])
            .args(args),
    );
    let docs = deploy::yaml_documents(&String::from_utf8(output.stdout).unwrap());
    docs[0]["data"]["notes"].as_str().unwrap().to_string()
}

/// Copies the folder `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn notes_say_how_to_reach_the_api_read_the_key_and_register_an_agent() {
    let notes = render_notes(&[]);
    for expected in [
        &format!("kubectl -n {NAMESPACE} port-forward svc/effp-api 8080:80") as &str,
        &format!(
            "kubectl -n {NAMESPACE} get secret effp-secrets -o jsonpath='{{.data.EFFP_API_KEYS}}' | base64 -d"
        ),
        "Authorization: Bearer",
        "jsonpath='{.data.agent-key}'",
        "effp-agent --server",
        "--device jetson-xavier-nx",
        "crates/agent/effp-agent.service",
        "docs/jetson.md",
        "agent.enabled=true",
    ] {
        assert!(
            notes.contains(expected),
            "NOTES.txt lacks {expected:?}:\n{notes}"
        );
    }
    assert!(!notes.contains("<no value>"), "{notes}");

    let notes = render_notes(&["-f", &ci_file("all-values.yaml")]);
    for expected in [
        "https://effp.example.com/",
        "https://api.effp.example.com/v1",
        "kubectl label node <jetson-node> effp.io/device=jetson-orin-nano",
        "ServiceMonitor effp-all",
    ] {
        assert!(
            notes.contains(expected),
            "NOTES.txt lacks {expected:?}:\n{notes}"
        );
    }
    assert!(!notes.contains("<no value>"), "{notes}");
}
