//! Every shader in `shaders/` parses and validates with naga, as compiled
//! for devices without and with subgroups (`gpu::shader_source`), and
//! declares a `Params` uniform at binding 0 (the convention every launcher
//! relies on); `shader_source` keeps the right section of each.

use std::path::Path;

use crossmodal::gpu::shader_source;

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let raw = std::fs::read_to_string(&path).unwrap();
        // As compiled on devices without and with subgroups.
        let mut module = None;
        for subgroups in [false, true] {
            let source = shader_source(&raw, subgroups);
            let what = format!("{} (subgroups: {subgroups})", path.display());
            let parsed = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
            let capabilities = if subgroups {
                naga::valid::Capabilities::SUBGROUP
            } else {
                naga::valid::Capabilities::empty()
            };
            let mut validator =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
            if subgroups {
                validator
                    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                    .subgroup_operations(naga::valid::SubgroupOperationSet::all());
            }
            validator
                .validate(&parsed)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
            module = Some(parsed);
        }
        let module = module.unwrap();
        let source = raw;
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

#[test]
fn shader_source_keeps_one_version_of_each_section() {
    let src = "a\n// #if subgroups\nsg\n// #else\nplain\n// #endif\nb\n";
    assert_eq!(shader_source(src, true), "a\n\nsg\n\n\n\nb\n");
    assert_eq!(shader_source(src, false), "a\n\n\n\nplain\n\nb\n");
    // Line numbers stay those of the file.
    assert_eq!(
        shader_source(src, true).lines().count(),
        src.lines().count()
    );
}
