//! `docs/configuration.md` names every flag `telemetry-receiver --help` lists.

use std::path::Path;

use telemetry_test_support::docs::undocumented_flags;

#[test]
fn the_configuration_page_names_every_flag() -> anyhow::Result<()> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let binary = Path::new(env!("CARGO_BIN_EXE_telemetry-receiver"));
    let missing = undocumented_flags(binary, &page)?;
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not name {missing:?}"
    );
    Ok(())
}
