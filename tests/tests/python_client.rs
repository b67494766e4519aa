//! The official Kubernetes Python client (`pip install kubernetes`, installed by `cargo xtask
//! setup`) against a real `skiff control`: the third client family users bring.

use std::process::Command;

#[test]
fn official_python_client_works() {
    let control = skiff_tests::Control::start().expect("skiff control starts");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/python/client_flow.py");
    let out =
        Command::new("python3").arg(&script).env("KUBECONFIG", &control.kubeconfig).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client flow failed:\n{stdout}\n{stderr}\nserver log:\n{}", control.log());
    assert!(stdout.contains("all python client checks passed"), "{stdout}");
}
