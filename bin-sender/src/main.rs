//! `telemetry-sender`: see `--help`.

use anyhow::Result;
use telemetry_sender::{config, service};

#[tokio::main]
async fn main() -> Result<()> {
    telemetry_sources::memory::limit_arenas();
    telemetry_runtime::logging::init();
    telemetry_link::tls::install_default_provider();
    let settings = config::Settings::from_process()?;
    service::run(settings).await
}
