//! What the agent says about its device: board model, L4T and JetPack releases,
//! TensorRT version, power mode and whether the clocks are pinned. Each fact comes
//! from a file or a tool that may be missing; a missing one is left out, never an
//! error. The parsers are pure functions of the text, so they are tested on samples.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use effp_protocol::DeviceFacts;
use effp_protocol::benchmark::MAX_AGENT_TEXT_LEN;

/// Longest a fact-gathering tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// The facts of this machine, for an agent registered as device kind `kind`.
pub fn gather(kind: &str) -> DeviceFacts {
    let model = std::fs::read("/proc/device-tree/model")
        .ok()
        .and_then(|bytes| parse_device_tree_model(&bytes))
        .or_else(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| parse_cpuinfo_model(&text))
        });
    let l4t = std::fs::read_to_string("/etc/nv_tegra_release")
        .ok()
        .and_then(|text| parse_nv_tegra_release(&text));
    let jetpack = dpkg_version("nvidia-jetpack");
    let tensorrt = ["tensorrt", "libnvinfer10", "libnvinfer8"]
        .into_iter()
        .find_map(dpkg_version);
    let power_mode = run_tool("nvpmodel", &["-q"]).and_then(|text| parse_nvpmodel(&text));
    let jetson_clocks =
        run_tool("jetson_clocks", &["--show"]).and_then(|text| parse_jetson_clocks(&text));
    DeviceFacts {
        kind: kind.to_string(),
        model: model.map(bounded),
        l4t: l4t.map(bounded),
        jetpack: jetpack.map(bounded),
        tensorrt: tensorrt.map(bounded),
        power_mode: power_mode.map(bounded),
        jetson_clocks,
    }
}

/// The board name in `/proc/device-tree/model` (NUL-terminated), e.g. "NVIDIA Jetson
/// Xavier NX Developer Kit".
pub fn parse_device_tree_model(bytes: &[u8]) -> Option<String> {
    non_empty(String::from_utf8_lossy(bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()))
}

/// The CPU's name in `/proc/cpuinfo` (`model name`, else `Hardware` as some ARM
/// kernels write it).
pub fn parse_cpuinfo_model(text: &str) -> Option<String> {
    ["model name", "Hardware"].into_iter().find_map(|key| {
        text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key)
                .then(|| non_empty(value.trim()))
                .flatten()
        })
    })
}

/// The L4T release in `/etc/nv_tegra_release`: `# R35 (release), REVISION: 3.1, …`
/// is "35.3.1".
pub fn parse_nv_tegra_release(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with('#'))?;
    let after_r = line.split_once('R')?.1;
    let major: String = after_r.chars().take_while(char::is_ascii_digit).collect();
    let revision = line.split_once("REVISION:")?.1;
    let revision = revision.split(',').next()?.trim();
    let valid = !major.is_empty()
        && !revision.is_empty()
        && revision.chars().all(|c| c.is_ascii_digit() || c == '.');
    valid.then(|| format!("{major}.{revision}"))
}

/// The upstream part of a Debian version as `dpkg-query -W -f='${Version}'` prints
/// it: `8.5.2.2-1+cuda11.4` is "8.5.2.2", `5.1-b147` is "5.1", `1:2.3-4` is "2.3".
pub fn parse_dpkg_version(text: &str) -> Option<String> {
    let version = text.trim();
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    let upstream = version.rsplit_once('-').map_or(version, |(u, _)| u);
    non_empty(upstream)
}

/// The power mode in `nvpmodel -q` output (`NV Power Mode: MODE_20W_6CORE`).
pub fn parse_nvpmodel(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (_, mode) = line.split_once("NV Power Mode:")?;
        non_empty(mode.trim())
    })
}

/// Whether `jetson_clocks --show` shows the clocks pinned: the GPU's and every
/// online CPU's minimum frequency equal to their maximum. `None` when it shows no GPU.
pub fn parse_jetson_clocks(text: &str) -> Option<bool> {
    let gpu = text
        .lines()
        .find(|l| l.trim_start().starts_with("GPU MinFreq="))?;
    let pinned = |line: &str| {
        let min = field(line, "MinFreq=");
        let max = field(line, "MaxFreq=");
        min.is_some() && min == max
    };
    let mut all = pinned(gpu);
    for line in text.lines().map(str::trim_start) {
        let is_cpu = line.starts_with("cpu") && line.contains("MinFreq=");
        if is_cpu && field(line, "Online=") != Some("0") {
            all &= pinned(line);
        }
    }
    Some(all)
}

/// The value after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split_once(key)?.1;
    rest.split_whitespace().next()
}

/// `dpkg-query`'s version of an installed package.
fn dpkg_version(package: &str) -> Option<String> {
    run_tool("dpkg-query", &["-W", "-f=${Version}", package])
        .and_then(|text| parse_dpkg_version(&text))
}

/// The standard output of `program args`, when it runs and succeeds within
/// [`TOOL_TIMEOUT`]; `None` when it is missing, fails or hangs.
pub fn run_tool(program: &str, args: &[&str]) -> Option<String> {
    if program.contains('/') && !Path::new(program).exists() {
        return None;
    }
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.by_ref().take(1 << 20).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().ok()?;
    status.filter(|s| s.success()).map(|_| text)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A fact cut to the size the server accepts.
fn bounded(s: String) -> String {
    if s.len() <= MAX_AGENT_TEXT_LEN {
        s
    } else {
        crate::client::truncate(&s, MAX_AGENT_TEXT_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_no_facts() {
        assert_eq!(run_tool("effp-agent-no-such-tool", &[]), None);
        assert_eq!(run_tool("false", &[]), None);
        assert_eq!(run_tool("echo", &["hi"]).as_deref(), Some("hi\n"));
    }

    #[test]
    fn gathering_never_fails_and_keeps_the_kind() {
        let facts = gather("cpu");
        assert_eq!(facts.kind, "cpu");
    }
}
