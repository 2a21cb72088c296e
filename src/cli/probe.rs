//! `send-worker probe`: GET `/readyz` (or another URL) and exit 0 on 200,
//! 1 otherwise, with a short timeout. For health checks in images without
//! a shell or curl (distroless, the compose stack).

use std::time::Duration;

use anyhow::{Context, bail};

pub const DEFAULT_URL: &str = "http://127.0.0.1:9090/readyz";
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct Args {
    /// The URL to GET.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&args.url)
        .send()
        .await
        .with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    // The body says why (the /readyz JSON); bounded, it is only printed.
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    if status.as_u16() != 200 {
        bail!("GET {} answered {status}: {}", args.url, body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}
