//! Bodies real kubectl 1.33 POSTed (captured by `tests/live_kubectl.rs`), each next to what the
//! same command prints with `--dry-run=client -o json`: decoding must give exactly that JSON.

use std::path::Path;

#[test]
fn every_fixture_decodes_to_kubectls_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("pb") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        match skiff_protobuf::decode(&body) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "{name}: got\n{}\nwant\n{}",
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&want).unwrap()
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        checked.push(name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked.len() >= 25, "only {} fixtures: {checked:?}", checked.len());
}
