//! Every shader in `shaders/` parses and validates with naga, and declares a
//! `Params` uniform at binding 0 (the convention every launcher relies on).

use std::path::Path;

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
        assert!(
            module
                .entry_points
                .iter()
                .all(|ep| ep.stage == naga::ShaderStage::Compute),
            "{}: only compute entry points belong in shaders/",
            path.display()
        );
        assert!(
            source.contains("@group(0) @binding(0) var<uniform> params: Params;"),
            "{}: binding 0 must be the uniform `params: Params`",
            path.display()
        );
        checked += 1;
    }
    assert!(checked > 0, "no shaders found in {}", dir.display());
}
