//! `telemetry-receiver`: see `--help`.

use anyhow::Result;
use telemetry_receiver::{config, service};

#[tokio::main]
async fn main() -> Result<()> {
    telemetry_runtime::logging::init();
    telemetry_link::tls::install_default_provider();
    let settings = config::Settings::from_process()?;
    service::run(settings).await
}
