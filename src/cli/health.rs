//! `effp health`: the container health check. Images without a shell (the API image
//! is distroless) cannot run curl, so the binary probes its own endpoint.

use std::time::Duration;

use clap::Args;

/// Arguments of `effp health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Endpoint to probe: the API's /readyz or /healthz, or a worker's /healthz on
    /// EFFP_WORKER_METRICS_LISTEN.
    #[arg(default_value = "http://127.0.0.1:8080/healthz", value_parser = parse_url)]
    pub url: url::Url,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_s: u64,
}

fn parse_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    Ok(url)
}

/// Runs `effp health`: exit status 0 when the endpoint answers 2xx, 1 otherwise
/// (with the reason on stderr).
pub fn run(args: &HealthArgs) -> anyhow::Result<u8> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(args.timeout_s))
        .redirects(0)
        .build();
    match agent.get(args.url.as_str()).call() {
        Ok(response) => {
            println!("{} {}", response.status(), args.url);
            Ok(0)
        }
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            anyhow::bail!("{} answered {code}: {}", args.url, body.trim())
        }
        // The transport error names the URL itself.
        Err(ureq::Error::Transport(t)) => anyhow::bail!("health check failed: {t}"),
    }
}
