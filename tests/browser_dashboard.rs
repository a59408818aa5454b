//! The dashboard at `/` in a real headless chromium, as a person uses it: enter a
//! key, upload a model and a dataset, start a short EFFP job, watch it succeed with
//! its charts drawn, download the pruned model; a bad upload shows the server's
//! message, a second tenant sees none of the first's objects, a running job's curve
//! arrives live and the job is cancelled from its page, an agent's latencies appear,
//! a file dropped on the page uploads with a progress bar,
//! and the page runs under its Content-Security-Policy without errors. Screenshots of the main pages go to
//! docs/screenshots/.

mod browser;
mod common;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use browser::{Browser, page_errors, prefer_color_scheme};
use fantoccini::Locator;
use fantoccini::key::Key;
use service::*;

const KEY_A: &str = "tenant-a-key-0123456789";
const KEY_B: &str = "tenant-b-key-0123456789";
const SECONDS: fn(u64) -> Duration = Duration::from_secs;

fn screenshots() -> PathBuf {
    effp_testkit::fixtures::workspace_root().join("docs/screenshots")
}

async fn use_key(browser: &Browser, key: &str) {
    let input = browser.find("#api-key", SECONDS(10)).await;
    input.clear().await.unwrap();
    input.send_keys(key).await.unwrap();
    browser.click("#key-form button[type=submit]").await;
}

async fn go(browser: &Browser, base: &str, fragment: &str) {
    browser
        .client
        .goto(&format!("{base}/{fragment}"))
        .await
        .unwrap();
}

/// The page as it stands passes axe-core's WCAG 2.1 A and AA rules (names, roles,
/// labels, contrast, landmarks, ARIA use), and every form control has a label a
/// screen reader can read.
async fn assert_accessible(browser: &Browser, page: &str) {
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "{page}: accessibility violations {violations:#?}"
    );
    let unlabelled = browser
        .run(
            "return [...document.querySelectorAll('input, select, textarea, progress')]\
               .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
               .map(e => e.outerHTML)",
        )
        .await;
    assert_eq!(
        unlabelled,
        serde_json::json!([]),
        "{page}: unlabelled controls"
    );
}

fn temp_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_prunes_a_detector_from_the_dashboard() {
    let server = Server::start(&[], &[("EFFP_API_KEYS", &format!("a:{KEY_A},b:{KEY_B}"))]);
    let base = server.url.clone();
    let files = tempfile::tempdir().unwrap();
    let browser = Browser::start(1280, 1000).await;
    go(&browser, &base, "").await;
    // Without a key the server refuses, and the page says so at the key field.
    let alert = browser.text("#alert").await;
    assert!(alert.contains("Enter an API key"), "{alert}");
    assert_accessible(&browser, "key").await;
    use_key(&browser, KEY_A).await;

    // A model, uploaded through the file picker of the drop zone.
    go(&browser, &base, "#/models").await;
    let model_file = temp_file(&files, "trained.onnx", &fixture_bytes("trained.onnx"));
    browser.type_into("#upload-model-file", &model_file).await;
    browser.find("#model-facts", SECONDS(60)).await;
    let facts = browser.text("#model-facts").await;
    let api_models = call("GET", &format!("{base}/v1/models"), Some(KEY_A), None).json();
    let model = &api_models["items"][0];
    let params = model["inspect"]["totals"]["params"].as_u64().unwrap();
    assert!(
        facts.contains(&format_thousands(params)),
        "the page shows the API's parameter count {params}: {facts}"
    );
    assert_eq!(browser.text("#unsupported-ops").await, "none");
    let bars = browser
        .until(
            "the op histogram",
            SECONDS(5),
            "return document.querySelectorAll('#op-histogram rect').length",
        )
        .await;
    let ops = model["inspect"]["op_histogram"].as_object().unwrap().len();
    assert_eq!(bars.as_u64().unwrap() as usize, ops, "one bar per operator");
    assert_accessible(&browser, "model").await;
    browser.screenshot(&screenshots().join("model.png")).await;

    // A bad upload: the server's problem document, shown as it came.
    go(&browser, &base, "#/models").await;
    let garbage = temp_file(&files, "broken.onnx", b"this is not an ONNX model at all");
    let expected = call(
        "POST",
        &format!("{base}/v1/models?name=broken.onnx"),
        Some(KEY_A),
        Some(b"this is not an ONNX model at all"),
    )
    .problem(422);
    browser.type_into("#upload-model-file", &garbage).await;
    let shown = browser
        .until(
            "the upload's error",
            SECONDS(30),
            "const a = document.getElementById('alert'); return a.hidden ? '' : a.textContent",
        )
        .await;
    let detail = expected["detail"].as_str().unwrap();
    assert!(
        shown.as_str().unwrap().contains(detail),
        "the page shows the server's message {detail:?}: {shown}"
    );

    // A dataset.
    go(&browser, &base, "#/datasets").await;
    let dataset_file = temp_file(
        &files,
        "synth.tar.gz",
        &tar_gz_folder(&effp_testkit::fixtures::dir().join("synth"), "synth"),
    );
    browser
        .type_into("#upload-dataset-file", &dataset_file)
        .await;
    browser.find("#dataset-splits", SECONDS(120)).await;
    assert_eq!(
        browser.text("#dataset-classes").await,
        "circle, square, triangle"
    );
    assert_accessible(&browser, "dataset").await;

    // The job form: a target out of range is shown at its field, from the API.
    go(&browser, &base, "#/jobs/new").await;
    let form = browser.find("#job-form", SECONDS(10)).await;
    let model_id = model["id"].as_str().unwrap();
    let dataset_id = call("GET", &format!("{base}/v1/datasets"), Some(KEY_A), None).json()["items"]
        [0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    form.find(Locator::Id("f-model"))
        .await
        .unwrap()
        .select_by_value(model_id)
        .await
        .unwrap();
    form.find(Locator::Id("f-dataset"))
        .await
        .unwrap()
        .select_by_value(&dataset_id)
        .await
        .unwrap();
    let target = form.find(Locator::Id("f-target")).await.unwrap();
    target.clear().await.unwrap();
    target.send_keys("1.5").await.unwrap();
    assert_accessible(&browser, "new job").await;
    browser.click("#submit-job").await;
    let error = browser
        .until(
            "the target's error",
            SECONDS(10),
            "const e = document.getElementById('f-target-error'); return e.hidden ? '' : e.textContent",
        )
        .await;
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("1.5 is not between 0 and 1"),
        "{error}"
    );
    assert_eq!(
        target.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    browser.screenshot(&screenshots().join("new-job.png")).await;

    // Now a valid one: a short EFFP run, on the device the form offers first (auto,
    // which is the CPU on this machine).
    target.clear().await.unwrap();
    target.send_keys("0.7").await.unwrap();
    let steps = form.find(Locator::Id("f-steps")).await.unwrap();
    steps.send_keys("12").await.unwrap();
    browser.click("#submit-job").await;
    browser.find("#job-state", SECONDS(20)).await;
    let job_id = browser
        .until(
            "the job page",
            SECONDS(20),
            "const m = location.hash.match(/#\\/jobs\\/(job_[0-9a-f]+)/); return m ? m[1] : ''",
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    // Live: the charts fill while it trains, from the event stream.
    browser
        .until(
            "a succeeded job",
            SECONDS(600),
            "const s = document.getElementById('job-state').dataset.state;\
             if (s === 'failed' || s === 'cancelled') return 'ended ' + s; return s === 'succeeded' ? s : ''",
        )
        .await;
    assert_eq!(
        browser.attr("#job-state", "data-state").await.as_deref(),
        Some("succeeded")
    );
    let report = call(
        "GET",
        &format!("{base}/v1/jobs/{job_id}/artifacts/report.json"),
        Some(KEY_A),
        None,
    )
    .json();
    let curve = report["curve"].as_array().unwrap().len();
    for (chart, lines) in [
        ("chart-loss", 1),
        ("chart-flops", 2),
        ("chart-groups", 1),
        ("chart-regrown", 1),
    ] {
        let drawn = browser
            .until(
                chart,
                SECONDS(20),
                &format!(
                    "const c = document.getElementById('{chart}');\
                     const paths = [...c.querySelectorAll('path')].filter(p => (p.getAttribute('d') || '').split('L').length >= 2);\
                     return paths.length === {lines} ? [Number(c.dataset.points), paths.length] : null"
                ),
            )
            .await;
        assert_eq!(
            drawn[0].as_u64().unwrap() as usize,
            curve * lines,
            "{chart} draws every step of the report's curve"
        );
    }
    let layers = browser
        .until(
            "the layer chart",
            SECONDS(20),
            "const c = document.getElementById('layer-chart'); return c ? c.querySelectorAll('rect').length : 0",
        )
        .await;
    assert_eq!(
        layers.as_u64().unwrap() as usize,
        2 * report["compaction"]["layers"].as_array().unwrap().len(),
        "a before and an after bar per layer"
    );
    let job = call(
        "GET",
        &format!("{base}/v1/jobs/{job_id}"),
        Some(KEY_A),
        None,
    )
    .json();
    assert_eq!(job["spec"]["device"], "auto", "{job}");
    assert_eq!(report["training"]["device"], "cpu");
    let map_after = report["accuracy"]["after"]["map50_95"].as_f64().unwrap();
    let results = browser.text("#results-table").await;
    assert!(
        results.contains(&format!("{map_after:.4}")),
        "mAP after {map_after:.4} in {results}"
    );
    assert_accessible(&browser, "job").await;
    browser.screenshot(&screenshots().join("job.png")).await;
    // The same page in the dark palette (charts, tables, buttons) passes too.
    prefer_color_scheme(&browser, "dark").await;
    assert_accessible(&browser, "job, dark").await;
    prefer_color_scheme(&browser, "light").await;

    // The pruned model, downloaded through the page, is the API's artifact.
    browser.click("button[data-artifact='pruned.onnx']").await;
    let downloaded = browser.downloaded("pruned.onnx", SECONDS(30)).await;
    let artifact = call(
        "GET",
        &format!("{base}/v1/jobs/{job_id}/artifacts/pruned.onnx"),
        Some(KEY_A),
        None,
    );
    assert_eq!(artifact.status, 200);
    assert!(
        downloaded == artifact.body,
        "the downloaded bytes differ from the API's"
    );

    // The list shows it.
    go(&browser, &base, "#/jobs").await;
    let state = browser
        .text(&format!("tr[data-job='{job_id}'] [data-state]"))
        .await;
    assert_eq!(state, "succeeded");
    assert_accessible(&browser, "jobs").await;
    browser.screenshot(&screenshots().join("jobs.png")).await;

    // Nothing on these pages broke: no script error, no CSP violation.
    let log = browser.log().await;
    assert!(page_errors(&log).is_empty(), "{:#?}", page_errors(&log));
    // And the policy is enforced: an inline script does not run, and says why.
    browser
        .run(
            "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true';\
             document.body.append(s); return null",
        )
        .await;
    assert_eq!(
        browser.run("return window.inlineRan === true").await,
        serde_json::json!(false)
    );
    let log = browser.log().await;
    assert!(
        log.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("Content Security Policy")),
        "the blocked inline script is reported: {log:#?}"
    );

    // A second tenant's key sees none of it.
    use_key(&browser, KEY_B).await;
    go(&browser, &base, "#/models").await;
    browser.find("#models-empty", SECONDS(10)).await;
    go(&browser, &base, "#/jobs").await;
    let empty = browser
        .until(
            "the empty job list",
            SECONDS(10),
            "const l = document.getElementById('jobs-list'); return l && l.textContent.includes('No jobs yet') ? l.textContent : ''",
        )
        .await;
    assert!(empty.as_str().unwrap().contains("No jobs yet"));
    go(&browser, &base, &format!("#/jobs/{job_id}")).await;
    let alert = browser
        .until(
            "the other tenant's job",
            SECONDS(10),
            "const a = document.getElementById('alert'); return a.hidden ? '' : a.textContent",
        )
        .await;
    assert!(alert.as_str().unwrap().contains("no job"), "{alert}");
    // The key never reached a URL: not in the address, not in the page's history.
    let url = browser.client.current_url().await.unwrap();
    assert!(!url.as_str().contains(KEY_B) && !url.as_str().contains(KEY_A));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_fits_a_phone_and_follows_the_dark_preference() {
    let server = Server::start(&[], &[]);
    let base = server.url.clone();
    // Loopback without keys: the dashboard works with no key entered.
    let (model, _) = upload_model_and_data(&base, None);
    let browser = Browser::start(390, 844).await;
    go(&browser, &base, &format!("#/models/{model}")).await;
    browser.find("#model-facts", SECONDS(20)).await;
    let overflow = browser
        .run("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways at phone width by {overflow} px"
    );
    assert_accessible(&browser, "model at phone width").await;
    browser
        .screenshot(&screenshots().join("phone-model.png"))
        .await;
    // Keyboard: the skip link comes before the header's first link (a view focuses
    // its content when it opens, so step back from the logo), and Enter moves focus
    // to the content without changing the view.
    browser
        .run("document.querySelector('.logo').focus(); return null")
        .await;
    let shift_tab = format!("{}{}", Key::Shift, Key::Tab);
    browser.press(&shift_tab).await;
    let focused = browser
        .run("return document.activeElement.textContent")
        .await;
    assert_eq!(focused, "Skip to content");
    browser.press(&Key::Enter.to_string()).await;
    let after = browser
        .run("return [document.activeElement.id, location.hash]")
        .await;
    assert_eq!(
        after,
        serde_json::json!(["view", format!("#/models/{model}")])
    );

    // Dark: the page follows the system's preference.
    let background = "return getComputedStyle(document.body).backgroundColor";
    let light = browser.run(background).await;
    prefer_color_scheme(&browser, "dark").await;
    let dark = browser.run(background).await;
    assert_eq!(light, "rgb(247, 248, 250)");
    assert_eq!(dark, "rgb(17, 21, 28)");
    assert_accessible(&browser, "model at phone width, dark").await;
    // The audit finds what it should: a button without a name, and grey text on the
    // dark background.
    browser
        .run(
            "const b = document.createElement('button'); b.id = 'unnamed';\
             const p = document.createElement('p'); p.id = 'faint'; p.textContent = 'faint';\
             p.style.color = '#333'; document.querySelector('main').append(b, p); return null",
        )
        .await;
    let found: Vec<_> = browser
        .accessibility_violations()
        .await
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found, ["button-name", "color-contrast"]);
    browser
        .run("document.getElementById('unnamed').remove(); document.getElementById('faint').remove(); return null")
        .await;
    browser
        .screenshot(&screenshots().join("phone-model-dark.png"))
        .await;
    let log = browser.log().await;
    assert!(page_errors(&log).is_empty(), "{:#?}", page_errors(&log));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_dropped_on_the_page_uploads_with_a_progress_bar() {
    let server = Server::start(&[], &[]);
    let base = server.url.clone();
    let browser = Browser::start(1280, 1000).await;
    go(&browser, &base, "#/models").await;
    browser.find("#upload-model", SECONDS(10)).await;
    // Every value the page gives a progress bar, and whether the bar was shown then.
    browser
        .run(
            "const native = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');\
             window.progressSeen = [];\
             Object.defineProperty(HTMLProgressElement.prototype, 'value', {\
               get() { return native.get.call(this); },\
               set(v) { const box = this.closest('.upload-progress');\
                        if (box) window.progressSeen.push([v, box.hidden]); native.set.call(this, v); } });\
             return null",
        )
        .await;
    // A file dragged over the drop zone and dropped there, as from a file manager.
    let bytes = fixture_bytes("trained.onnx");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let over = browser
        .client
        .execute(
            "const hex = arguments[0], bytes = new Uint8Array(hex.length / 2);\
             for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.substr(2 * i, 2), 16);\
             const zone = document.getElementById('upload-model'), dt = new DataTransfer();\
             dt.items.add(new File([bytes], 'dropped.onnx'));\
             zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));\
             const over = zone.classList.contains('over');\
             zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));\
             return over",
            vec![serde_json::json!(hex)],
        )
        .await
        .unwrap();
    assert_eq!(over, true, "the zone shows that a file is over it");
    browser.find("#model-facts", SECONDS(60)).await;

    let models = call("GET", &format!("{base}/v1/models"), None, None).json();
    let items = models["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{models}");
    assert_eq!(items[0]["name"], "dropped.onnx");
    let id = items[0]["id"].as_str().unwrap();
    assert_eq!(
        call("GET", &format!("{base}/v1/models/{id}/file"), None, None).body,
        bytes,
        "the dropped file's bytes, unchanged"
    );
    let location = browser.run("return location.hash").await;
    assert_eq!(location, format!("#/models/{id}"));
    // The bar was shown while the upload ran, rose without going back and ended full.
    let seen = browser.run("return window.progressSeen").await;
    let seen = seen.as_array().unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    let values: Vec<f64> = seen.iter().map(|s| s[0].as_f64().unwrap()).collect();
    assert_eq!(values[0], 0.0, "starts empty: {values:?}");
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    assert_eq!(values.last(), Some(&1.0), "{values:?}");
    assert!(
        seen.iter().all(|s| s[1] == false),
        "the bar was hidden while it moved: {seen:?}"
    );
    let log = browser.log().await;
    assert!(page_errors(&log).is_empty(), "{:#?}", page_errors(&log));
    browser.close().await;
}

/// `n` with thousands separators, as the page writes numbers.
fn format_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_draws_its_curve_live_and_is_cancelled_from_its_page() {
    let server = Server::start(&[], &[]);
    let base = server.url.clone();
    let (model, dataset) = upload_model_and_data(&base, None);
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({
            "model": model, "dataset": dataset, "method": "effp",
            "target": {"flops_ratio": 0.5}, "device": "cpu",
            "training": {"steps": 5000, "batch": 2},
        }),
    );
    let browser = Browser::start(1280, 1000).await;
    // The job list redraws as the job's progress changes; a job's link that has the
    // keyboard focus keeps it.
    go(&browser, &base, "#/jobs").await;
    let link = format!("#jobs-table a[href='#/jobs/{id}']");
    browser.find(&link, SECONDS(10)).await;
    let progress = browser
        .run(&format!(
            "const a = document.querySelector(\"{link}\"); a.focus(); \
             return a.closest('tr').querySelector('progress').value"
        ))
        .await;
    browser
        .until(
            "the list redrawn with new progress",
            SECONDS(120),
            &format!(
                "const a = document.querySelector(\"{link}\"); \
                 return a && a.closest('tr').querySelector('progress').value !== {progress}"
            ),
        )
        .await;
    assert_eq!(
        browser
            .run("return document.activeElement.getAttribute('href')")
            .await,
        format!("#/jobs/{id}"),
        "the focus left the job's link when the list was redrawn"
    );
    go(&browser, &base, &format!("#/jobs/{id}")).await;
    // Steps arrive over the event stream while the job trains: no report exists yet.
    browser
        .until(
            "live training steps",
            SECONDS(120),
            "return Number(document.getElementById('chart-loss').dataset.points) >= 2",
        )
        .await;
    assert!(
        call("GET", &format!("{base}/v1/jobs/{id}/artifacts"), None, None).json()["items"]
            .as_object()
            .unwrap()
            .is_empty(),
        "the curve came from the stream, not from a report"
    );
    assert_accessible(&browser, "running job").await;
    // Keyboard focus on Cancel survives the redraws that new steps cause, and Enter
    // there cancels the job.
    let points = browser
        .run("document.getElementById('cancel-job').focus(); return Number(document.getElementById('chart-loss').dataset.points)")
        .await
        .as_f64()
        .unwrap();
    browser
        .until(
            "more training steps",
            SECONDS(120),
            &format!("return Number(document.getElementById('chart-loss').dataset.points) >= {points} + 2"),
        )
        .await;
    assert_eq!(
        browser.run("return document.activeElement.id").await,
        "cancel-job",
        "the focus left the cancel button as steps arrived"
    );
    browser.press(&Key::Enter.to_string()).await;
    browser
        .until(
            "a cancelled job",
            SECONDS(120),
            "return document.getElementById('job-state').dataset.state === 'cancelled'",
        )
        .await;
    assert_eq!(wait_for_end(&base, &id, None)["state"], "cancelled");
    // Ended: no cancel button any more.
    let buttons = browser
        .run("return document.querySelectorAll('#cancel-job').length")
        .await;
    assert_eq!(buttons, 0);
    let log = browser.log().await;
    assert!(page_errors(&log).is_empty(), "{:#?}", page_errors(&log));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_a_benchmark_agent_measured_show_on_the_job_page() {
    let server = Server::start(&[], &[]);
    let base = server.url.clone();
    let (model, _) = upload_model_and_data(&base, None);
    let id = submit_job(
        &base,
        None,
        &serde_json::json!({
            "model": model, "method": "l1", "target": {"flops_ratio": 0.5},
            "benchmark": {"device": "cpu", "iterations": 3},
        }),
    );
    let browser = Browser::start(1280, 1000).await;
    go(&browser, &base, &format!("#/jobs/{id}")).await;
    // A real agent process (CPU runner) claims and measures the benchmark.
    let agent = std::process::Command::new(common::agent_binary())
        .args(["--server", &base, "--device", "cpu", "--runner", "cpu"])
        .args([
            "--name",
            "browser-test",
            "--threads",
            "1",
            "--warmup",
            "1",
            "--once",
        ])
        .args(["--key", "loopback-agent-needs-no-key"])
        .stdout(std::process::Stdio::null())
        .status();
    assert!(agent.unwrap().success(), "the agent failed");
    let job = wait_for_end(&base, &id, None);
    let result = &job["benchmarks"][0]["result"];
    let p50 = |model: &str| result[model]["end_to_end"]["p50_ms"].as_f64().unwrap();
    browser.find("#latency-table", SECONDS(30)).await;
    let table = browser.text("#latency-table").await;
    for model in ["original", "pruned"] {
        let shown = format!("{:.2}", p50(model));
        assert!(table.contains(&shown), "{model} p50 {shown} in {table}");
    }
    assert_accessible(&browser, "job with latencies").await;
    browser
        .screenshot(&screenshots().join("job-latency.png"))
        .await;
    browser.close().await;
}
