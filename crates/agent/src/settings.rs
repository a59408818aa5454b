//! The agent's settings: every command-line flag, its environment variable and its
//! one default, in one place.

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use effp_protocol::benchmark::{MAX_AGENT_TEXT_LEN, MAX_CLAIM_WAIT_S, is_device_kind};

/// Seconds a claim waits for a task before the server answers "none" (a long poll).
pub const DEFAULT_POLL_WAIT_S: u32 = 30;
/// Untimed runs the CPU runner makes before timing.
pub const DEFAULT_CPU_WARMUP_RUNS: u32 = 10;
/// Milliseconds trtexec runs before timing (its `--warmUp`).
pub const DEFAULT_TRTEXEC_WARMUP_MS: u32 = 500;
/// Fewest characters an agent key may have (the server refuses shorter keys).
pub const MIN_KEY_LEN: usize = 16;

/// Which runner measures the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum RunnerChoice {
    /// trtexec when it is found, else the CPU runner.
    #[default]
    Auto,
    /// TensorRT's trtexec (fails to start when it is not found).
    Trtexec,
    /// The built-in CPU runtime (tract), always fp32.
    Cpu,
}

/// The agent key: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey(String);

impl AgentKey {
    /// The key itself, for the `Authorization` header only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(<redacted>)")
    }
}

/// effp-agent: measures the original and pruned models of effp benchmark tasks on
/// this device and reports the latencies to the effp server.
#[derive(Debug, Clone, Parser)]
#[command(name = "effp-agent", version, about, long_about = None)]
pub struct Settings {
    /// The effp server's base URL, e.g. https://effp.example.com
    #[arg(long, env = "EFFP_AGENT_SERVER", value_parser = parse_server)]
    pub server: url::Url,

    /// The agent key the server was given (EFFP_AGENT_KEYS on the server), at least
    /// 16 characters.
    #[arg(long, env = "EFFP_AGENT_KEY", hide_env_values = true, value_parser = KeyParser)]
    pub key: AgentKey,

    /// The kind of device this agent measures on, e.g. jetson-xavier-nx or cpu: it
    /// claims the benchmarks asked for this kind.
    #[arg(long, env = "EFFP_AGENT_DEVICE", value_parser = parse_device)]
    pub device: String,

    /// How to measure: trtexec when found (auto), TensorRT's trtexec, or the built-in
    /// CPU runtime.
    #[arg(long, env = "EFFP_AGENT_RUNNER", value_enum, default_value_t = RunnerChoice::Auto)]
    pub runner: RunnerChoice,

    /// The trtexec program [default: `trtexec` on PATH, then
    /// /usr/src/tensorrt/bin/trtexec].
    #[arg(long, env = "EFFP_AGENT_TRTEXEC")]
    pub trtexec: Option<PathBuf>,

    /// This agent's name, unique among the agents sharing its key [default: the host
    /// name and the process id].
    #[arg(long, env = "EFFP_AGENT_NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Where downloaded models and engines go while a task runs (a folder per task,
    /// removed after it) [default: a new temporary folder].
    #[arg(long, env = "EFFP_AGENT_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Warm-up before timing: untimed runs for the CPU runner [default: 10],
    /// milliseconds (trtexec's --warmUp) for trtexec [default: 500].
    #[arg(long, env = "EFFP_AGENT_WARMUP")]
    pub warmup: Option<u32>,

    /// Threads of the CPU runner [default: every CPU of this machine].
    #[arg(long, env = "EFFP_AGENT_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Handle one task, then exit (claims until one comes or a signal arrives).
    #[arg(long, env = "EFFP_AGENT_ONCE")]
    pub once: bool,

    /// Seconds each claim waits for a task before asking again (at most 60).
    #[arg(
        long,
        env = "EFFP_AGENT_POLL_WAIT_S",
        default_value_t = DEFAULT_POLL_WAIT_S,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CLAIM_WAIT_S))
    )]
    pub poll_wait_s: u32,
}

impl Settings {
    /// Untimed runs of the CPU runner before timing.
    pub fn cpu_warmup_runs(&self) -> u32 {
        self.warmup.unwrap_or(DEFAULT_CPU_WARMUP_RUNS)
    }

    /// Milliseconds of trtexec warm-up.
    pub fn trtexec_warmup_ms(&self) -> u32 {
        self.warmup.unwrap_or(DEFAULT_TRTEXEC_WARMUP_MS)
    }

    /// Threads of the CPU runner.
    pub fn cpu_threads(&self) -> usize {
        match self.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// The agent's name: `--name`, else `<host name>-<process id>`.
    pub fn agent_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "effp-agent".to_string());
        let mut name = format!("{host}-{}", std::process::id());
        name.truncate(MAX_AGENT_TEXT_LEN);
        name
    }

    /// The server's base URL without a trailing `/`, to append API paths to.
    pub fn server_base(&self) -> String {
        self.server.as_str().trim_end_matches('/').to_string()
    }
}

fn parse_server(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| {
        format!(
            "{s:?} is not a URL ({e}); give the server's base URL, e.g. https://effp.example.com"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?} must have no query or fragment: give the server's base URL"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} names no host"));
    }
    Ok(url)
}

/// Parses `--key` with messages that never repeat the key (clap's own messages quote
/// the value they refuse).
#[derive(Debug, Clone, Copy)]
struct KeyParser;

impl clap::builder::TypedValueParser for KeyParser {
    type Value = AgentKey;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<AgentKey, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--key: {why}\n"),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("the agent key must be printable ASCII without spaces".into()))?;
        parse_key(text).map_err(refuse)
    }
}

fn parse_key(s: &str) -> Result<AgentKey, String> {
    if s.len() < MIN_KEY_LEN {
        return Err(format!(
            "the agent key must be at least {MIN_KEY_LEN} characters (it has {}); use the key \
             the server lists in EFFP_AGENT_KEYS",
            s.chars().count()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the agent key must be printable ASCII without spaces".to_string());
    }
    Ok(AgentKey(s.to_string()))
}

fn parse_device(s: &str) -> Result<String, String> {
    if is_device_kind(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a device kind: use 1 to 64 lower-case letters, digits and '-', not \
             starting with '-' (e.g. jetson-xavier-nx or cpu)"
        ))
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_AGENT_TEXT_LEN {
        return Err(format!(
            "the agent name must be 1 to {MAX_AGENT_TEXT_LEN} bytes"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("the agent name must have no control characters".to_string());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut argv = vec!["effp-agent"];
        argv.extend_from_slice(args);
        Settings::try_parse_from(argv)
    }

    const KEY: &str = "0123456789abcdef";

    #[test]
    fn flags_have_their_defaults() {
        let s = parse(&[
            "--server",
            "http://127.0.0.1:8080/",
            "--key",
            KEY,
            "--device",
            "cpu",
        ])
        .unwrap();
        assert_eq!(s.runner, RunnerChoice::Auto);
        assert_eq!(s.poll_wait_s, DEFAULT_POLL_WAIT_S);
        assert_eq!(s.cpu_warmup_runs(), DEFAULT_CPU_WARMUP_RUNS);
        assert_eq!(s.trtexec_warmup_ms(), DEFAULT_TRTEXEC_WARMUP_MS);
        assert_eq!(s.server_base(), "http://127.0.0.1:8080");
        assert!(!s.once);
        assert!(s.cpu_threads() >= 1);
        assert!(
            s.agent_name()
                .ends_with(&format!("-{}", std::process::id()))
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let bad_device = parse(&[
            "--server",
            "http://x",
            "--key",
            KEY,
            "--device",
            "Jetson NX",
        ])
        .unwrap_err();
        assert!(
            bad_device.to_string().contains("not a device kind"),
            "{bad_device}"
        );
        let short_key =
            parse(&["--server", "http://x", "--key", "secret", "--device", "cpu"]).unwrap_err();
        let text = short_key.to_string();
        assert!(text.contains("at least 16"), "{text}");
        assert!(!text.contains("secret"), "the key is not repeated: {text}");
        let bad_url = parse(&["--server", "ftp://x", "--key", KEY, "--device", "cpu"]).unwrap_err();
        assert!(bad_url.to_string().contains("http"), "{bad_url}");
        let long_wait = parse(&[
            "--server",
            "http://x",
            "--key",
            KEY,
            "--device",
            "cpu",
            "--poll-wait-s",
            "61",
        ]);
        assert!(long_wait.is_err());
    }

    #[test]
    fn the_key_stays_out_of_debug_output() {
        let s = parse(&["--server", "http://x", "--key", KEY, "--device", "cpu"]).unwrap();
        assert!(!format!("{s:?}").contains(KEY));
        assert_eq!(s.key.secret(), KEY);
    }
}
