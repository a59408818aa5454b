//! The container images and the compose stack (docker/): the Dockerfiles pass
//! hadolint and keep the promises the deployment relies on (non-root, health checks,
//! signals reach effp, the pinned torch), and compose.yaml is a valid Compose file
//! (against the Compose Specification's schema) with the stack docs/deploy.md
//! describes. No container engine runs here; `tests/run_distributed.rs` runs the same
//! stack from the binaries.

mod deploy;

use std::collections::BTreeMap;
use std::process::Command;

use deploy::{python, root, run_ok, tool, yaml_documents};
use serde_json::Value;

const IMAGES: [&str; 4] = ["api", "worker", "agent", "s3"];

fn dockerfile(image: &str) -> String {
    std::fs::read_to_string(root().join(format!("docker/{image}.Dockerfile"))).unwrap()
}

/// The instructions of a Dockerfile's last stage (the image that ships), continuation
/// lines joined, comments left out.
fn final_stage(text: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    instructions.split_off(last_from)
}

fn instruction<'a>(stage: &'a [String], keyword: &str) -> Option<&'a str> {
    stage
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix(&format!("{keyword} ")))
}

#[test]
fn every_dockerfile_passes_hadolint_with_the_projects_rules() {
    for image in IMAGES {
        let path = root().join(format!("docker/{image}.Dockerfile"));
        run_ok(
            Command::new(tool("hadolint"))
                .arg("--config")
                .arg(root().join(".hadolint.yaml"))
                .arg(&path),
        );
    }
    // The rules are live: a label the schema requires is reported when it is missing.
    let unlabelled = dockerfile("s3").replace("org.opencontainers.image.version", "x-version");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unlabelled.Dockerfile");
    std::fs::write(&path, unlabelled).unwrap();
    let out = Command::new(tool("hadolint"))
        .arg("--config")
        .arg(root().join(".hadolint.yaml"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("DL3049"));
}

#[test]
fn every_image_runs_as_a_non_root_user_with_effp_receiving_the_signals() {
    for image in IMAGES {
        let stage = final_stage(&dockerfile(image));
        let user = instruction(&stage, "USER").unwrap_or_else(|| panic!("{image}: no USER"));
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u >= 1000),
            "{image} runs as {user}: a numeric non-root uid lets Kubernetes check runAsNonRoot"
        );
        assert_eq!(
            instruction(&stage, "STOPSIGNAL"),
            Some("SIGTERM"),
            "{image}"
        );
        let entrypoint = instruction(&stage, "ENTRYPOINT").unwrap();
        let entrypoint: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_else(|_| {
            panic!("{image}: ENTRYPOINT is not in exec form, so a shell would take the signals")
        });
        assert!(!entrypoint.is_empty());
        let healthcheck =
            instruction(&stage, "HEALTHCHECK").unwrap_or_else(|| panic!("{image}: no HEALTHCHECK"));
        if image == "agent" {
            assert_eq!(healthcheck, "NONE", "the agent serves nothing to probe");
        } else {
            assert!(healthcheck.contains("CMD"), "{image}: {healthcheck}");
        }
        for label in ["title", "description", "version"] {
            assert!(
                stage.iter().any(|i| i.starts_with("LABEL")
                    && i.contains(&format!("org.opencontainers.image.{label}="))),
                "{image}: no {label} label"
            );
        }
    }
}

#[test]
fn the_api_image_is_the_build_without_libtorch_on_a_base_without_a_shell() {
    let text = dockerfile("api");
    assert!(text.contains("cargo build --release --locked --no-default-features --bin effp"));
    let stage = final_stage(&text);
    let from = instruction(&stage, "FROM").unwrap();
    assert!(from.starts_with("gcr.io/distroless/cc-debian12:"), "{from}");
    assert_eq!(
        instruction(&stage, "CMD"),
        Some(r#"["serve", "--no-worker"]"#)
    );
    // Distroless has no curl: the health check is effp's own probe of /readyz.
    assert!(
        instruction(&stage, "HEALTHCHECK")
            .unwrap()
            .contains(r#"CMD ["/usr/local/bin/effp", "health", "http://127.0.0.1:8080/readyz"]"#)
    );
}

#[test]
fn the_worker_image_carries_the_torch_the_project_pins_and_tini_as_pid_1() {
    let requirements = std::fs::read_to_string(root().join("scripts/requirements.txt")).unwrap();
    let torch = requirements
        .lines()
        .find(|l| l.starts_with("torch=="))
        .expect("torch is pinned");
    let text = dockerfile("worker");
    assert!(
        text.contains(&format!("pip install --no-cache-dir {torch}")),
        "the worker image must install {torch}, as scripts/requirements.txt pins"
    );
    let stage = final_stage(&text);
    assert_eq!(
        instruction(&stage, "ENTRYPOINT"),
        Some(r#"["/usr/bin/tini", "--", "/usr/local/bin/effp"]"#)
    );
    assert_eq!(instruction(&stage, "CMD"), Some(r#"["worker"]"#));
    // The libraries land where the binary's rpath (LIBTORCH/lib) points.
    let libtorch = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV LIBTORCH="))
        .expect("LIBTORCH is set for the build");
    assert!(
        stage
            .iter()
            .any(|i| i.starts_with("COPY --from=build") && i.ends_with(&format!("{libtorch}/lib"))),
        "the runtime stage must hold {libtorch}/lib"
    );
}

#[test]
fn the_agent_image_is_cross_built_for_jetson_against_glibc_2_31() {
    let text = dockerfile("agent");
    assert!(text.contains("FROM --platform=$BUILDPLATFORM rust:"));
    assert!(text.contains("arm64) target=aarch64-unknown-linux-gnu"));
    assert!(text.contains(r#"--target "$target.2.31""#));
    // The same versions as `make agent-aarch64`.
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    assert!(makefile.contains("cargo-zigbuild@0.24.1") && text.contains("cargo-zigbuild@0.24.1"));
    let zig = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ZIG_VERSION := "))
        .unwrap();
    assert!(text.contains(&format!("ziglang=={zig}")));
    let stage = final_stage(&text);
    assert_eq!(
        instruction(&stage, "FROM"),
        Some("ubuntu:20.04"),
        "L4T r35's userland"
    );
    assert!(text.contains("EFFP_AGENT_TRTEXEC=/usr/src/tensorrt/bin/trtexec"));
}

#[test]
fn the_build_context_leaves_out_build_outputs_and_secrets() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let entries: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for must in ["target", ".venv", ".git", ".env"] {
        assert!(entries.contains(&must), ".dockerignore lacks {must}");
    }
}

fn compose(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("docker").join(name)).unwrap();
    let mut docs = yaml_documents(&text);
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// Validates `document` against the vendored Compose Specification schema with the
/// Python `jsonschema` package; returns the errors.
fn compose_schema_errors(document: &Value) -> Vec<String> {
    let schema = root().join("tests/vendor/compose-spec/compose-spec.json");
    let out = python(
        "import json, sys, jsonschema\n\
         schema = json.load(open(sys.argv[1]))\n\
         doc = json.load(sys.stdin)\n\
         for e in jsonschema.Draft7Validator(schema).iter_errors(doc):\n    \
         print(list(e.absolute_path), e.message)",
        &[&schema],
        document.to_string().as_bytes(),
    );
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_compose_files_are_valid_compose_and_pass_yamllint() {
    for name in ["compose.yaml", "compose.gpu.yaml"] {
        let errors = compose_schema_errors(&compose(name));
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        run_ok(
            Command::new(tool("yamllint"))
                .arg("--strict")
                .arg("-c")
                .arg(root().join(".yamllint.yaml"))
                .arg(root().join("docker").join(name)),
        );
    }
    // The check is live: a misspelt key is reported.
    let mut broken = compose("compose.yaml");
    broken["services"]["api"]["replica"] = Value::from(2);
    assert!(!compose_schema_errors(&broken).is_empty());
}

#[test]
fn compose_runs_the_distributed_stack_the_docs_describe() {
    let doc = compose("compose.yaml");
    let services = doc["services"].as_object().unwrap();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for service in ["redis", "s3", "api", "worker", "lb", "agent"] {
        assert!(names.contains(&service), "no {service} in {names:?}");
    }
    let redis = services["redis"]["command"].as_array().unwrap();
    let redis: Vec<&str> = redis.iter().map(|v| v.as_str().unwrap()).collect();
    assert!(
        redis.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "Redis keeps an append-only file"
    );
    let api = &services["api"];
    assert_eq!(api["deploy"]["replicas"], 2);
    assert_eq!(api["command"], serde_json::json!(["serve", "--no-worker"]));
    assert_eq!(services["worker"]["command"], serde_json::json!(["worker"]));
    for service in ["api", "worker", "agent"] {
        assert_eq!(services[service]["read_only"], true, "{service}");
        let dockerfile = services[service]["build"]["dockerfile"].as_str().unwrap();
        assert!(root().join(dockerfile).is_file(), "{dockerfile}");
    }
    assert!(
        root()
            .join("docker")
            .join(services["s3"]["build"]["dockerfile"].as_str().unwrap())
            .is_file()
    );
    // Long enough for the worker to checkpoint and hand its job back.
    assert_eq!(services["worker"]["stop_grace_period"], "2m");
    // Both stores come up before effp uses them.
    for service in ["api", "worker"] {
        let depends = services[service]["depends_on"].as_object().unwrap();
        for store in ["redis", "s3"] {
            assert_eq!(depends[store]["condition"], "service_healthy", "{service}");
        }
    }
    // The agent reaches the API through the balancer, as a remote agent would.
    let agent = &services["agent"]["environment"];
    assert_eq!(agent["EFFP_AGENT_SERVER"], "http://lb:8080");
    assert_eq!(agent["EFFP_AGENT_DEVICE"], "cpu");
    // Its key is among the API's agent keys by default.
    let keys = default_of(api["environment"]["EFFP_AGENT_KEYS"].as_str().unwrap());
    let key = default_of(agent["EFFP_AGENT_KEY"].as_str().unwrap());
    assert!(keys.contains(&key), "{keys} lacks {key}");
    let balancer = std::fs::read_to_string(root().join("docker/nginx.conf")).unwrap();
    assert!(balancer.contains("server api:8080;"));
    // run-distributed.sh runs the same file with any nginx binary, also where no
    // distribution's nginx folders exist: every folder nginx creates at start is
    // under /tmp (which the script points at its run folder).
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        assert!(
            balancer.contains(&format!("{temp}_temp_path /tmp/{temp};")),
            "{temp}_temp_path is not under /tmp"
        );
    }

    let gpu = compose("compose.gpu.yaml");
    let devices = &gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(devices["driver"], "nvidia");
    assert_eq!(devices["capabilities"], serde_json::json!(["gpu"]));
}

/// What a `${NAME:-default}` interpolation gives when NAME is unset (nested ones too).
fn default_of(text: &str) -> String {
    let mut out = text.to_string();
    // Innermost first: a default may itself be an interpolation.
    while let Some(start) = out.rfind("${") {
        let end = start + out[start..].find('}').unwrap();
        let inner = &out[start + 2..end];
        let value = inner
            .split_once(":-")
            .map(|(_, d)| d)
            .unwrap_or("")
            .to_string();
        out.replace_range(start..=end, &value);
    }
    out
}

#[test]
fn compose_interpolation_defaults_are_read_the_way_compose_reads_them() {
    assert_eq!(default_of("${A:-x}"), "x");
    assert_eq!(default_of("cpu:${K:-key-1}"), "cpu:key-1");
    assert_eq!(default_of("${A:-cpu:${K:-k}}"), "cpu:k");
    assert_eq!(default_of("${A:-}"), "");
    let doc = compose("compose.yaml");
    let env: BTreeMap<String, String> = doc["services"]["api"]["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), default_of(v.as_str().unwrap())))
        .collect();
    assert_eq!(env["EFFP_REDIS_URL"], "redis://redis:6379/0");
    assert_eq!(env["EFFP_S3_ENDPOINT"], "http://s3:8014");
    assert_eq!(env["EFFP_LISTEN"], "0.0.0.0:8080");
}
