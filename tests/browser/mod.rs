//! A real browser for the dashboard's tests: Debian's chromium, headless, driven over
//! WebDriver through Debian's chromedriver, which the harness starts on a free port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A headless chromium with its chromedriver; both stop when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Where the browser saves downloads.
    pub downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

fn executable(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("{name} is missing: `make servers` installs Debian's chromium and chromium-driver")
}

/// axe-core's browser script, which `make servers` fetches from npm into the cache.
fn axe_source() -> String {
    let path = effp_testkit::fixtures::cache_root().join("tools/axe-core-4.14.1/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `make servers` fetches axe-core from npm",
            path.display()
        )
    })
}

impl Browser {
    /// Starts chromedriver and a headless chromium window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = effp_testkit::servers::free_port();
        let driver = Command::new(executable("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": executable("chromium"),
                // The machine's network is closed: the background-networking flags
                // keep chromium from trying to reach Google's hosts.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Self {
            client,
            driver,
            downloads,
            _profile: profile,
        }
    }

    /// Waits (at most `limit`) for an element matching `css`.
    pub async fn find(&self, css: &str, limit: Duration) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(limit)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {limit:?}: {e}"))
    }

    /// Waits until `script` (a function body returning a value) returns something
    /// truthy; returns it. A script that throws (what it reads is not on the page
    /// yet) counts as not yet.
    pub async fn until(&self, what: &str, limit: Duration, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = match self.client.execute(script, vec![]).await {
                Ok(value) => value,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::JavascriptError =>
                {
                    assert!(
                        started.elapsed() < limit,
                        "{what}: not within {limit:?}; the check last threw {e}"
                    );
                    Value::Null
                }
                Err(e) => panic!("{what}: {e}"),
            };
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The WCAG 2.1 A and AA rule violations axe-core finds in the page as it stands:
    /// for each rule, its id, impact, what it asks for and the elements it names.
    pub async fn accessibility_violations(&self) -> Vec<Value> {
        if self.run("return typeof window.axe").await != "object" {
            self.run(&axe_source()).await;
        }
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
                   .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,\
                     nodes: v.nodes.slice(0, 5).map(n => [n.target.join(' '), n.failureSummary])}))),\
                         e => done('axe failed: ' + e))",
                vec![],
            )
            .await
            .unwrap();
        match found {
            Value::Array(violations) => violations,
            other => panic!("{other}"),
        }
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn run(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Sends keys to the focused element, as a person at the keyboard.
    pub async fn press(&self, keys: &str) {
        self.client
            .active_element()
            .await
            .unwrap()
            .send_keys(keys)
            .await
            .unwrap();
    }

    /// Clicks the element matching `css` once it is there.
    pub async fn click(&self, css: &str) {
        self.on_element(css, |e| async move { e.click().await.map(|_| ()) })
            .await
    }

    /// Types `text` into the element matching `css` (a file input takes a path).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, |e| async move { e.send_keys(text).await })
            .await
    }

    /// The text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.on_element(css, |e| async move { e.text().await })
            .await
    }

    /// The attribute `name` of the element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.on_element(css, |e| async move { e.attr(name).await })
            .await
    }

    /// Does `act` on the element matching `css`, finding it again when the page
    /// replaced it in between (pages re-render as job events arrive).
    async fn on_element<T, F>(
        &self,
        css: &str,
        act: impl Fn(fantoccini::elements::Element) -> F,
    ) -> T
    where
        F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let limit = Duration::from_secs(10);
        let started = Instant::now();
        loop {
            match act(self.find(css, limit).await).await {
                Ok(out) => return out,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && started.elapsed() < limit => {}
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    /// Saves a PNG screenshot of the whole page (up to 4,000 px tall) to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let (width, height) = self.client.get_window_size().await.unwrap();
        let page = self
            .run("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(height);
        // The window's frame takes some of its height; grow it until the page fits.
        let chrome = height.saturating_sub(
            self.run("return window.innerHeight")
                .await
                .as_u64()
                .unwrap_or(height),
        );
        self.client
            .set_window_size(width as u32, (page + chrome).clamp(height, 4000) as u32)
            .await
            .unwrap();
        self.run("window.scrollTo(0, 0); return null").await;
        let png = self.client.screenshot().await.unwrap();
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser's log since the last call: console messages, script errors,
    /// Content-Security-Policy violations and failed loads, as
    /// `{level, source, message}` entries.
    pub async fn log(&self) -> Vec<Value> {
        let log = ChromeCommand {
            path: "se/log",
            body: json!({"type": "browser"}),
        };
        match self.client.issue_cmd(log).await.unwrap() {
            Value::Array(entries) => entries,
            other => panic!("a log: {other}"),
        }
    }

    /// A file the browser downloaded, once it is whole.
    pub async fn downloaded(&self, name: &str, limit: Duration) -> Vec<u8> {
        let path = self.downloads.path().join(name);
        let partial = self.downloads.path().join(format!("{name}.crdownload"));
        let started = Instant::now();
        while !path.is_file() || partial.exists() {
            assert!(
                started.elapsed() < limit,
                "{name} was not downloaded: {:?}",
                std::fs::read_dir(self.downloads.path())
                    .unwrap()
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::read(path).unwrap()
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// Emulates the system's colour-scheme preference (`light` or `dark`) through the
/// DevTools protocol.
pub async fn prefer_color_scheme(browser: &Browser, scheme: &str) {
    browser
        .client
        .issue_cmd(ChromeCommand {
            path: "goog/cdp/execute",
            body: json!({
                "cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
            }),
        })
        .await
        .unwrap();
}

/// A command of chromedriver's own beyond W3C WebDriver (so fantoccini has no call
/// for it): a POST of `body` to `session/{id}/{path}`.
#[derive(Debug)]
struct ChromeCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for ChromeCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}

/// Entries of a browser log that are errors of the page itself: script errors and
/// security (CSP) reports, not the failed loads a test provokes on purpose.
pub fn page_errors(log: &[Value]) -> Vec<&Value> {
    log.iter()
        .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
        .collect()
}
