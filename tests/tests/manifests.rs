//! The Kubernetes manifests in deploy/, validated offline: every YAML file there goes
//! through tests/manifests/validate.py (kubernetes-validate's bundled schemas in strict
//! mode for Kubernetes objects, a JSON schema for the IstioOperator, key checks for the
//! Helm values and the kustomization; see the script's header). Broken manifests written
//! here must be rejected, so the check cannot pass by checking nothing.
//!
//! Needs the venv that scripts/setup.sh makes (/opt/interceptor-venv, or
//! $INTERCEPTOR_VENV); without it these tests fail, they do not skip. No root, no cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The venv's python, or a failure that says how to get it.
fn python() -> PathBuf {
    let venv = std::env::var_os("INTERCEPTOR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/interceptor-venv"));
    let python = venv.join("bin/python");
    let found = Command::new(&python)
        .args(["-c", "import kubernetes_validate"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "the manifest validator is missing: no kubernetes_validate in {}; run \
         `bash scripts/setup.sh` (as root) to install it",
        venv.display()
    );
    python
}

/// Runs the validator on `files`: (success, stdout and stderr).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python())
        .arg(repo_root().join("tests/manifests/validate.py"))
        .args(files)
        .output()
        .expect("running tests/manifests/validate.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, found);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            found.push(path);
        }
    }
}

#[test]
fn every_manifest_in_deploy_is_valid() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("deploy"), &mut files);
    assert!(!files.is_empty(), "deploy/ holds no manifest (*.yaml)");
    let mut failures = Vec::new();
    for file in &files {
        let (ok, output) = validate(std::slice::from_ref(file));
        print!("{output}");
        // One `ok` line per YAML document, and no failure line.
        if !ok || !output.lines().any(|l| l.starts_with("ok ")) || output.contains("FAIL") {
            failures.push(format!("{}:\n{output}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} manifests failed validation:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Writes `text` to a fresh temporary file named `name` and validates it.
fn validate_text(name: &str, text: &str) -> (bool, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "interceptor-manifests-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("creating a temporary folder");
    let file = dir.join(name);
    std::fs::write(&file, text).expect("writing a temporary manifest");
    let result = validate(&[file]);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn assert_rejected(name: &str, text: &str, expected: &str) {
    let (ok, output) = validate_text(name, text);
    assert!(
        !ok,
        "the validator accepted a broken manifest:\n{text}\nit said:\n{output}"
    );
    assert!(
        output.contains(expected),
        "rejected, but not for the expected reason ({expected:?}):\n{output}"
    );
}

#[test]
fn a_pod_whose_containers_is_a_string_is_rejected() {
    assert_rejected(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers: \"x\"\n",
        "is not of type 'array'",
    );
}

#[test]
fn an_unknown_field_is_rejected() {
    assert_rejected(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  \
         - name: c\n    image: busybox\n    imagePullPolcy: Always\n",
        "'imagePullPolcy' was unexpected",
    );
}

#[test]
fn an_api_version_without_a_schema_is_rejected() {
    // The kubernetes-validate CLI only warns about this and exits 0.
    assert_rejected(
        "daemonset.yaml",
        "apiVersion: apps/v2\nkind: DaemonSet\nmetadata:\n  name: broken\nspec: {}\n",
        "Couldn't find schema",
    );
}

#[test]
fn bidirectional_propagation_without_privileged_is_rejected() {
    assert_rejected(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  \
         - name: c\n    image: busybox\n    volumeMounts:\n    - name: bpffs\n      \
         mountPath: /sys/fs/bpf\n      mountPropagation: Bidirectional\n  volumes:\n  \
         - name: bpffs\n    hostPath:\n      path: /sys/fs/bpf\n",
        "needs privileged: true",
    );
}

#[test]
fn a_helm_values_file_without_the_init_image_is_rejected() {
    assert_rejected(
        "values-broken.yaml",
        "global:\n  proxy_init:\n    imag: localhost/interceptor:0.1.0\n",
        "global.proxy_init.image",
    );
}

#[test]
fn an_istio_operator_with_an_unknown_spec_field_is_rejected() {
    assert_rejected(
        "istiooperator.yaml",
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata:\n  name: x\n\
         spec:\n  value:\n    global:\n      proxy_init:\n        image: localhost/interceptor:0.1.0\n",
        "istiooperator.schema.json",
    );
}
