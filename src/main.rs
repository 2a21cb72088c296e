//! The `send-worker` binary: a thin shell over the library's command line
//! ([`send_worker::cli`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    send_worker::cli::main().await
}
