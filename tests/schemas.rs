//! The checked-in tool schemas and specification are what the code generates,
//! and what the running server serves.

mod common;

use std::path::Path;

use common::*;

#[test]
fn checked_in_schemas_and_specification_match_the_code() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(bin())
        .args(["schemas", "--check", "--out"])
        .arg(repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generated files drifted; run `cargo run -- schemas --out .`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schemas_command_writes_every_tool_and_check_detects_drift() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(bin())
        .args(["schemas", "--out"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for t in TOOLS {
        assert!(
            dir.path().join(format!("tool-schemas/{t}.json")).is_file(),
            "{t}"
        );
    }
    let spec = std::fs::read_to_string(dir.path().join("MCP_TOOL_SPECIFICATION.md")).unwrap();
    for t in TOOLS {
        assert!(
            spec.contains(&format!("### {t}")),
            "{t} missing from the specification"
        );
    }
    let check = |d: &Path| {
        std::process::Command::new(bin())
            .args(["schemas", "--check", "--out"])
            .arg(d)
            .status()
            .unwrap()
            .success()
    };
    assert!(check(dir.path()));
    std::fs::write(dir.path().join("tool-schemas/get_session.json"), "{}").unwrap();
    assert!(!check(dir.path()));
    std::fs::remove_file(dir.path().join("tool-schemas/get_session.json")).unwrap();
    assert!(!check(dir.path()));
}

#[tokio::test]
async fn served_tools_equal_the_checked_in_schemas() {
    let env = Env::new();
    // With output schemas listed, a served tool is its checked-in definition
    // with the input schema in its compact form.
    let c = env
        .stdio_config(Era::Legacy, "[tools]\noutput_schemas = true\n")
        .await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for tool in c.list_all_tools().await.unwrap() {
        let file = repo.join(format!("tool-schemas/{}.json", tool.name));
        let mut on_disk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        myrmex::server::profiles::compact(&mut on_disk["inputSchema"]);
        assert_eq!(
            serde_json::to_value(&tool).unwrap(),
            on_disk,
            "{}",
            tool.name
        );
    }
}
